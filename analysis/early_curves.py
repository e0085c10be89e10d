"""C7: train-loss curves of several ranks at one LR and their differences to the largest rank early in
training.

    python analysis/early_curves.py runs/tiny/early_rank --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "early_rank", tables=("early_differences",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
