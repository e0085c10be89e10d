"""C4: curves and LR sweeps per layer set (attention, MLP, all) with trainable-parameter counts, and
the best final loss of each.

    python analysis/layers.py runs/tiny/layers --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "layers", tables=("layers_best",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
