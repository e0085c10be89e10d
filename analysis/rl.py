"""C5: final reward (held-out accuracy when logged) vs LR per rank and FullFT, and the reward curves at
each best LR.

    python analysis/rl.py runs/tiny/rl --out figures
"""

from __future__ import annotations

import sys

from lora_lab.analysis import script_setup
from lora_lab.sections import analyze_experiment


def main(argv: list[str] | None = None) -> int:
    res, out, experiments = script_setup(__doc__, "rl", argv)
    for exp in experiments:
        sec = analyze_experiment(res, exp, out)
        print(f"{exp}: wrote {', '.join(str(p) for p in sec.files)}")
        if "optimal_lr_rl" in sec.tables:
            print(sec.tables["optimal_lr_rl"].to_string(index=False))
        for note in sec.notes:
            print(f"{exp}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
