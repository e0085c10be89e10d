"""C9: final eval loss at the best LR vs LoRA parameters for tiny-facts sets of known information
content, against FullFT, and the bits per parameter this implies.

    python analysis/capacity.py runs/tiny/capacity --out figures
"""

from __future__ import annotations

import sys

from lora_lab.analysis import script_setup
from lora_lab.sections import analyze_experiment


def main(argv: list[str] | None = None) -> int:
    res, out, experiments = script_setup(__doc__, "capacity", argv)
    for exp in experiments:
        sec = analyze_experiment(res, exp, out)
        print(f"{exp}: wrote {', '.join(str(p) for p in sec.files)}")
        if "capacity" in sec.tables:
            print(sec.tables["capacity"].to_string(index=False))
        for note in sec.notes:
            print(f"{exp}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
