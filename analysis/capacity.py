"""C9: final eval loss at the best LR vs LoRA parameters for tiny-facts sets of known information
content, against FullFT, and the bits per parameter this implies.

    python analysis/capacity.py runs/tiny/capacity --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "capacity", tables=("capacity",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
