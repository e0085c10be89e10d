"""C1: the pointwise-minimum (over LRs) train-loss curve of each rank and of FullFT, and the step
where each rank leaves the FullFT curve by more than the seed-to-seed noise (curves.departures).

    python analysis/rank_curves.py runs/tiny/rank --out figures
"""

from __future__ import annotations

import sys
from pathlib import Path

from lora_lab import figures
from lora_lab.curves import label_runs
from lora_lab.report import script_main
from lora_lab.results import Results
from lora_lab.sections import rank_curves


def draw(res: Results, exp: str, out: Path) -> None:
    sub = res.of(exp)
    _, dep, fig = rank_curves(sub, label_runs(sub.plotted()), exp)
    print(f"{exp}: wrote {', '.join(map(str, figures.save(fig, out / exp, 'rank_curves')))}")
    print(dep.to_string(index=False) if dep is not None else "no FullFT curve: no departures")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "rank", argv=argv, each=draw)


if __name__ == "__main__":
    sys.exit(main())
