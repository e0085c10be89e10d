"""Run, resume or skip one run: what `lora-lab train`, `lora-lab pair`, sweeps and the Python API
call. It decides under the run directory's lock, after the pre-flight checks, and hands the run to
the loop its `task` names: lora_lab/train.py (SFT) or lora_lab/rl.py (RL).

    from lora_lab.config import compose
    from lora_lab.launch import train
    summary = train(compose(["method=lora", "lora.rank=4", "train.max_steps=20"]))
"""

from __future__ import annotations

import sys

from lora_lab import distributed
from lora_lab.config import Config
from lora_lab.data import load_rows
from lora_lab.learner import preflight
from lora_lab.runs import FINAL_STATUSES, ReadOnlyRunDir, RunDir, run_dir, run_id
from lora_lab.train import train_sft


def train(cfg: Config) -> dict:
    """Run (or resume, or skip) one run, SFT or (task=rl) RL; returns its summary. Never raises for
    a diverged run; a failure is recorded in summary.json and re-raised."""
    started = not distributed.current().world_size > 1 and distributed.world_size_from_env() > 1
    env, _ = distributed.setup(cfg.train.device)
    rid = run_id(cfg)
    # Several processes: rank 0 alone writes the run directory; the others read it (shared filesystem).
    rd = RunDir(run_dir(cfg)) if env.is_main else ReadOnlyRunDir(run_dir(cfg))
    try:
        done = distributed.broadcast_object(rd.summary())
        if done and done.get("status") in FINAL_STATUSES:
            final = ("final reward", done.get("final_reward")) if cfg.task == "rl" else ("final train loss", done.get("final_train_loss"))
            if env.is_main:
                print(f"{rid}: already {done['status']} ({final[0]} {final[1]}); skipping", file=sys.stderr)
            return done
        preflight(cfg)
        # A data set that cannot be used (not available offline, wrong schema, too many malformed rows)
        # raises DataError here: before the run directory is written or the model loaded (CLI exit 2).
        rows = load_rows(cfg.data)
        rd.lock()
        distributed.barrier()  # rank 0 holds the lock (or has raised RunBusy) before anyone goes on
        try:
            if cfg.task == "rl":
                from lora_lab.rl import train_rl  # RL's sampler and rewards load only for RL runs

                return train_rl(cfg, rid, rd, rows)
            return train_sft(cfg, rid, rd, rows)
        finally:
            rd.unlock()
    finally:
        if started:
            distributed.teardown()
