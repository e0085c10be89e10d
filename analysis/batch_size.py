"""C3: curves by batch size for each rank and FullFT (loss vs examples seen, minimum over LR), final
loss at the best LR vs batch size, and each curve's batch-size penalty.

    python analysis/batch_size.py runs/tiny/batch --out figures
"""

from __future__ import annotations

import sys

from lora_lab.analysis import script_setup
from lora_lab.sections import analyze_experiment


def main(argv: list[str] | None = None) -> int:
    res, out, experiments = script_setup(__doc__, "batch", argv)
    for exp in experiments:
        sec = analyze_experiment(res, exp, out)
        print(f"{exp}: wrote {', '.join(str(p) for p in sec.files)}")
        if "batch_penalty" in sec.tables:
            print(sec.tables["batch_penalty"].to_string(index=False))
        for note in sec.notes:
            print(f"{exp}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
