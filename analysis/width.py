"""Beyond the paper: the optimal LR of LoRA and FullFT against the model's width (LR = M (2000 /
hidden)^p fitted per method, with 90% intervals) and the LoRA/FullFT ratio per width against
hidden / (2 alpha) and 10x, extended to hidden 4096 as an extrapolation (lora_lab/ladder.py).

    python analysis/width.py runs/tiny/width --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "width", tables=("width_fit", "width_ratios", "width_ratio_fit"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
