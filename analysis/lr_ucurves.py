"""C2: final loss vs LR per rank and FullFT, the fitted optimal LR of each curve with its 90%
interval, and the LoRA/FullFT optimal-LR ratio per rank (optimal_lr.csv, lr_ratios.csv).

    python analysis/lr_ucurves.py runs/tiny/rank --out figures
"""

from __future__ import annotations

import sys
from pathlib import Path

from lora_lab import figures
from lora_lab.curves import label_runs, lr_ratios
from lora_lab.report import script_main
from lora_lab.results import Results
from lora_lab.sections import lr_ucurves


def draw(res: Results, exp: str, out: Path) -> None:
    runs = label_runs(res.of(exp).plotted())
    _, opt, fig = lr_ucurves(runs, exp)
    print(f"{exp}: wrote {', '.join(map(str, figures.save(fig, out / exp, 'lr_ucurves')))}")
    opt.to_csv(out / exp / "optimal_lr.csv", index=False)
    ratios = lr_ratios(opt, runs)
    ratios.to_csv(out / exp / "lr_ratios.csv", index=False)
    print(opt.drop(columns=["model", "experiment"]).to_string(index=False))
    print(ratios.to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "rank", argv=argv, each=draw)


if __name__ == "__main__":
    sys.exit(main())
