"""C5: final reward (held-out accuracy when logged) vs LR per rank and FullFT, and the reward curves at
each best LR.

    python analysis/rl.py runs/tiny/rl --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "rl", tables=("optimal_lr_rl",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
