"""The results loader: run directories -> tidy pandas tables, for the analysis and notebooks.

It reads only the files of the run-directory contract (config.yaml, metrics.jsonl, summary.json,
meta.json), through lora_lab/runs.py, so it works on runs written by any version of the harness, on this machine or copied
back from a cluster, and while sweeps are still writing.

    from lora_lab.results import load_results
    res = load_results(["runs/tiny/rank"])     # a runs root, experiment directories or run directories
    res.runs      # one row per run: flattened config (dotted keys, the seed in train.seed), summary fields, status,
                  # final_loss (nats per target token) and final_bpb (bits per UTF-8 byte of the targets)
    res.metrics   # one row per logged line: run_id, step, train_loss, train_bpb, eval_loss, eval_bpb, reward, ...
    res.plotted() # the runs a figure may show: completed and diverged (failed and unfinished are counted)

Status: a run with a summary.json has its `status` (completed | diverged | failed); one without is
`unfinished` (still running, or killed before it ended); one with a file that cannot be read (a
binary or non-object summary.json, an unparsable or missing config.yaml, a broken or NaN line in
metrics.jsonl) is `corrupt`, with the file named in `error`: counted, never plotted, and the other
runs are read as usual. A metrics.jsonl whose last line is cut off (a killed writer) loses that
line only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lora_lab.runs import CorruptFile, RunDir, RunsError, find_run_dirs

PLOTTED = ("completed", "diverged")
STATUSES = ("completed", "diverged", "failed", "corrupt", "unfinished")
# "Final" values are the mean over the last FINAL_WINDOW of the logged steps (at least one step):
# a single step's train loss of a small batch is noisy, and an LR sweep compares runs by it.
FINAL_WINDOW = 0.1
# Summary keys kept under their own names; the config's keys are dotted (optim.lr) and cannot clash.
SUMMARY_KEYS = ("status", "steps", "max_steps", "final_train_loss", "final_eval_loss", "final_train_bpb",
                "final_eval_bpb", "final_eval_unseen_loss", "trainable_params",
                "total_params", "wall_s", "step_time_s", "tokens", "examples", "error", "diverged_at_step",
                "final_reward", "final_eval_accuracy", "base_eval_accuracy", "final_val_accuracy", "base_val_accuracy")
# The config key whose runs are replicates: runs that differ only in it (it sets the LoRA init and the
# data order, lora_lab/data.py order_seed) are averaged, and their spread is the analysis's noise floor.
SEED_KEY = "train.seed"

# Provenance shown in the report (where and on what the runs ran).
META_KEYS = ("host", "device", "device_name", "git_commit", "git_dirty", "slurm_job_id")


# A path given to the loader that holds no run directory (one line, names the path); the run
# directory's own error, so that a missing path reads the same from `status` and `analyze`.
ResultsError = RunsError


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list):
            out[key] = tuple(v)  # hashable, so configs can be grouped by it
        else:
            out[key] = v
    return out


def final_value(values: list[float] | np.ndarray, window: float = FINAL_WINDOW) -> tuple[float, float]:
    """(mean, standard error) of the last `window` fraction of a series (at least one value).
    The standard error is 0 for a single value."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    n = max(1, math.ceil(window * x.size))
    tail = x[-n:]
    sem = float(tail.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return float(tail.mean()), sem


def seed_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's train.seed as an integer (0 where the config has none: runs written before the key)."""
    if SEED_KEY not in runs:
        return pd.Series(0, index=runs.index, dtype="int64")
    return pd.to_numeric(runs[SEED_KEY], errors="coerce").fillna(0).astype("int64")


def read_run(path: Path) -> tuple[dict, list[dict]]:
    """(row, metric lines) of one run directory; row has the flattened config, the summary's fields,
    `status` and the final values the analysis compares runs by. A run with a file that cannot be
    read (or a metrics line that is not a valid JSON object) has status `corrupt`, the problem in
    `error` (naming the file), and no lines: it is counted, never plotted."""
    rd = RunDir(path)
    problems: list[str] = []
    try:
        cfg = rd.config_dict()
        summary = rd.summary()
        meta = rd.meta() or {}
    except CorruptFile as exc:
        cfg, summary, meta = {}, None, {}
        problems.append(str(exc))
        try:
            cfg = rd.config_dict()  # the settings, where only the summary or meta.json is damaged
        except CorruptFile:
            pass
    lines = rd.metrics(problems)
    row: dict = _flatten(cfg)
    row["run_dir"] = str(path)
    row["run_id"] = path.name
    row["experiment"] = (cfg.get("run") or {}).get("experiment") or path.parent.name
    for k in SUMMARY_KEYS:
        row[k] = (summary or {}).get(k)
    for k in META_KEYS:
        row[f"meta.{k}"] = meta.get(k)
    if summary is None or summary.get("status") not in ("completed", "diverged", "failed"):
        row["status"] = "unfinished"
    if problems:
        row["status"], row["error"] = "corrupt", "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        lines = []
    train = [r for r in lines if r.get("train_loss") is not None and not r.get("diverged")]
    row["logged_steps"] = max((r["step"] for r in lines if "step" in r), default=0)
    row["final_loss"], row["final_loss_sem"] = final_value([r["train_loss"] for r in train])
    # The same window in bits per byte (NaN for runs logged before train_bpb existed).
    row["final_bpb"], row["final_bpb_sem"] = final_value([r.get("train_bpb") for r in train])
    rewards = [r["reward"] for r in lines if r.get("reward") is not None]
    row["final_reward_smoothed"], row["final_reward_sem"] = final_value(rewards)
    if row["status"] == "diverged":
        # A diverged run is infinitely bad at its LR (docs/design.md): it bounds the LR sweep, it is not missing.
        row["final_loss"], row["final_loss_sem"] = math.inf, 0.0
        row["final_bpb"], row["final_bpb_sem"] = math.inf, 0.0
        row["final_reward_smoothed"] = -math.inf
    return row, lines


@dataclass
class Results:
    """Tidy tables of a set of run directories."""

    runs: pd.DataFrame
    metrics: pd.DataFrame

    def plotted(self, runs: pd.DataFrame | None = None) -> pd.DataFrame:
        """The runs a figure may show: completed and diverged ones (failed and unfinished are
        counted in the report, never drawn)."""
        runs = self.runs if runs is None else runs
        return runs[runs["status"].isin(PLOTTED)]

    def experiments(self) -> list[str]:
        return sorted(self.runs["experiment"].unique()) if len(self.runs) else []

    def of(self, experiment: str) -> Results:
        """The runs of one experiment and their metric lines."""
        runs = self.runs[self.runs["experiment"] == experiment]
        return Results(runs, self.metrics[self.metrics["run_dir"].isin(runs["run_dir"])])

    def counts(self) -> pd.DataFrame:
        """Runs per experiment and status (every status a column, zeros included)."""
        if not len(self.runs):
            return pd.DataFrame(columns=["experiment", *STATUSES, "total"])
        t = pd.crosstab(self.runs["experiment"], self.runs["status"]).reindex(columns=list(STATUSES), fill_value=0)
        t["total"] = t.sum(axis=1)
        return t.reset_index().rename_axis(None, axis=1)

    def curve(self, run_dir: str, column: str = "train_loss") -> pd.DataFrame:
        """(step, value) of one run's lines that have `column`, sorted by step."""
        m = self.metrics
        if column not in m:
            return pd.DataFrame(columns=["step", column])
        m = m[(m["run_dir"] == run_dir) & m[column].notna()]
        if "diverged" in m:
            m = m[m["diverged"] != True]
        return m[["step", column]].sort_values("step").reset_index(drop=True)


def load_results(paths: Iterable[str | Path]) -> Results:
    """Read every run directory at or below `paths` into a Results (see the module docstring)."""
    dirs = find_run_dirs(paths)
    rows, metric_frames = [], []
    for d in dirs:
        row, lines = read_run(d)
        rows.append(row)
        if lines:
            frame = pd.DataFrame(lines)
            frame.insert(0, "run_dir", row["run_dir"])
            frame.insert(1, "run_id", row["run_id"])
            frame.insert(2, "experiment", row["experiment"])
            metric_frames.append(frame)
    runs = pd.DataFrame(rows)
    if not len(runs):
        runs = pd.DataFrame(columns=["run_dir", "run_id", "experiment", "status", "final_loss", "final_bpb"])
    metrics = (pd.concat(metric_frames, ignore_index=True) if metric_frames
               else pd.DataFrame(columns=["run_dir", "run_id", "experiment", "step"]))
    return Results(runs.reset_index(drop=True), metrics)
