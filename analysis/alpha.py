"""Beyond the paper: the optimal LR against rank under each alpha convention (alpha 32 fixed, alpha
= r, alpha = 2r, rsLoRA's alpha proportional to sqrt(r)), its slope per convention with a 90%
interval, and the LoRA/FullFT ratio per convention and rank (lora_lab/ladder.py).

    python analysis/alpha.py runs/tiny/alpha --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "alpha", tables=("alpha_slopes", "alpha_ratios"), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
