"""C8: trajectories of (alpha, init_A, LR_A, LR_B) variants grouped into classes that should coincide
under Adam with eps = 0, and their largest differences.

    python analysis/invariance.py runs/tiny/invariance --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "invariance", tables=("invariance",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
