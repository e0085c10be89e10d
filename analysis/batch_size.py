"""C3: curves by batch size for each rank and FullFT (loss vs examples seen, minimum over LR), final
loss at the best LR vs batch size, and each curve's batch-size penalty.

    python analysis/batch_size.py runs/tiny/batch --out figures
"""

from __future__ import annotations

import sys

from lora_lab.report import script_main


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "batch", tables=("batch_penalty",), argv=argv)


if __name__ == "__main__":
    sys.exit(main())
