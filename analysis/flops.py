"""C6: LoRA/FullFT FLOPs per training token (counted by lora_lab.flops for the experiment's model and
the adapters its runs trained: layer set, lm_head adapter) and the measured time per step of each
rank against FullFT, from the rank experiments' runs.

    python analysis/flops.py runs/tiny/rank --out figures

Step times are wall clock on whatever machine ran the runs (shared CPUs make them noisy).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from lora_lab.claims import counted_flops_ratio
from lora_lab.curves import label_runs
from lora_lab.report import script_main
from lora_lab.results import Results
from lora_lab.sections import step_times


def flops_and_step_time(res: Results, exp: str, out: Path) -> None:
    runs = label_runs(res.of(exp).plotted())
    t = step_times(runs)
    model, seq_len = runs["model.name"].iloc[0], runs["data.max_seq_len"].iloc[0]
    lora = runs[runs["method"] == "lora"]
    # the adapters the runs trained: their layer set and the lm_head adapter when lora.unembed
    layers = str(lora["lora.layers"].iloc[0]) if len(lora) and "lora.layers" in lora else "all"
    unembed = bool(lora["lora.unembed"].iloc[0]) if len(lora) and "lora.unembed" in lora else False
    t["flops_ratio"] = [None if pd.isna(r) else counted_flops_ratio(model, int(r), seq_len, layers, unembed)
                        for r in t["rank"]]
    (out / exp).mkdir(parents=True, exist_ok=True)
    t.to_csv(out / exp / "flops_and_step_time.csv", index=False)
    print(f"{exp} ({model}, sequence length {seq_len}):")
    print(t.to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, "rank", argv=argv, each=flops_and_step_time)


if __name__ == "__main__":
    sys.exit(main())
