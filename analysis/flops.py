"""C6: LoRA/FullFT FLOPs per training token (counted by lora_lab.flops for the experiment's model)
and the measured time per step of each rank against FullFT, from the rank experiments' runs.

    python analysis/flops.py runs/tiny/rank --out figures

Step times are wall clock on whatever machine ran the runs (shared CPUs make them noisy).
"""

from __future__ import annotations

import sys

import pandas as pd

from lora_lab.analysis import label_runs, script_setup
from lora_lab.report import counted_flops_ratio
from lora_lab.sections import step_times


def main(argv: list[str] | None = None) -> int:
    res, out, experiments = script_setup(__doc__, "rank", argv)
    for exp in experiments:
        runs = label_runs(res.of(exp).plotted())
        t = step_times(runs)
        model, seq_len = runs["model.name"].iloc[0], runs["data.max_seq_len"].iloc[0]
        t["flops_ratio"] = [None if pd.isna(r) else counted_flops_ratio(model, int(r), seq_len) for r in t["rank"]]
        (out / exp).mkdir(parents=True, exist_ok=True)
        t.to_csv(out / exp / "flops_and_step_time.csv", index=False)
        print(f"{exp} ({model}, sequence length {seq_len}):")
        print(t.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
