"""C1: the pointwise-minimum (over LRs) train-loss curve of each rank and of FullFT, and the step
where each rank leaves the FullFT curve by more than the tolerance (curves.TOL_REL).

    python analysis/rank_curves.py runs/tiny/rank --out figures
"""

from __future__ import annotations

import sys
from pathlib import Path

from lora_lab import figures
from lora_lab.curves import FULL, TOL_REL, curve_table, departures, label_runs, pointwise_min, reference_curves
from lora_lab.report import script_main
from lora_lab.results import Results


def rank_curves(res: Results, exp: str, out: Path) -> None:
    sub = res.of(exp)
    runs = label_runs(sub.plotted())
    curves = pointwise_min(sub, runs)
    has_full = FULL in set(curves["curve"])
    dep = departures(curves, reference_curves(runs)) if has_full else None
    fig = figures.curves_figure(curves, figures.curve_styles(curve_table(runs)), reference=FULL if has_full else None,
                                band=TOL_REL, marks=None if dep is None else dict(zip(dep["curve"], dep["departs_at_step"])),
                                title=f"{exp}: min over LR of train loss")
    print(f"{exp}: wrote {', '.join(map(str, figures.save(fig, out / exp, 'rank_curves')))}")
    print(dep.to_string(index=False) if dep is not None else "no FullFT curve: no departures")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "rank", argv=argv, each=rank_curves)


if __name__ == "__main__":
    sys.exit(main())
