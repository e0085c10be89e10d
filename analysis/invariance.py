"""C8: trajectories of (alpha, init_A, LR_A, LR_B) variants grouped into classes that should coincide
under Adam with eps = 0, and their largest differences.

    python analysis/invariance.py runs/tiny/invariance --out figures
"""

from __future__ import annotations

import sys

from lora_lab.analysis import script_setup
from lora_lab.sections import analyze_experiment


def main(argv: list[str] | None = None) -> int:
    res, out, experiments = script_setup(__doc__, "invariance", argv)
    for exp in experiments:
        sec = analyze_experiment(res, exp, out)
        print(f"{exp}: wrote {', '.join(str(p) for p in sec.files)}")
        if "invariance" in sec.tables:
            print(sec.tables["invariance"].to_string(index=False))
        for note in sec.notes:
            print(f"{exp}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
