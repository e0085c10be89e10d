"""C7: train-loss curves of several ranks at one LR and their differences to the largest rank early in
training, from a rank experiment's grid (at the LR sections.early_lr picks) or an early_rank
experiment.

    python analysis/early_curves.py runs/tiny/rank --out figures
"""

from __future__ import annotations

import sys
from pathlib import Path

from lora_lab.curves import kind_of, label_runs
from lora_lab.records import Section
from lora_lab.report import script_main
from lora_lab.results import Results
from lora_lab.sections import early_curves


def draw(res: Results, exp: str, out: Path) -> None:
    sub = res.of(exp)
    sec = Section(exp, kind_of(exp), out / exp)
    rec = early_curves(sub, label_runs(sub.plotted()), sec)
    if sec.files:
        print(f"{exp}: wrote {', '.join(map(str, sec.files))}")
        print(f"{exp}: lr {rec.lr:g}, {rec.chosen}")
        print(rec.diffs.to_string(index=False))
    for note in sec.notes:
        print(f"{exp}: {note}")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, ("rank", "early_rank"), argv=argv, each=draw)


if __name__ == "__main__":
    sys.exit(main())
