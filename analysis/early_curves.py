"""C7: train-loss curves of several ranks at one LR and their differences to the largest rank early in
training.

    python analysis/early_curves.py runs/tiny/early_rank --out figures
"""

from __future__ import annotations

import sys

from lora_lab.analysis import script_setup
from lora_lab.sections import analyze_experiment


def main(argv: list[str] | None = None) -> int:
    res, out, experiments = script_setup(__doc__, "early_rank", argv)
    for exp in experiments:
        sec = analyze_experiment(res, exp, out)
        print(f"{exp}: wrote {', '.join(str(p) for p in sec.files)}")
        if "early_differences" in sec.tables:
            print(sec.tables["early_differences"].to_string(index=False))
        for note in sec.notes:
            print(f"{exp}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
