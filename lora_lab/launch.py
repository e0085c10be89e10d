"""Run, resume or skip one run: what `lora-lab train`, `lora-lab pair`, sweeps and the Python API
call. It decides under the run directory's lock, after the pre-flight checks, and hands the run to
the loop its `task` names: lora_lab/train.py (SFT) or lora_lab/rl.py (RL).

    from lora_lab.config import compose
    from lora_lab.launch import train
    summary = train(compose(["method=lora", "lora.rank=4", "train.max_steps=20"]))
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

from lora_lab import distributed
from lora_lab.config import Config, ConfigError
from lora_lab.data import DataError, check_rows, run_rows
from lora_lab.learner import preflight, summary_from_final
from lora_lab.runs import FINAL_STATUSES, CorruptFile, ReadOnlyRunDir, RunBusy, RunDir, run_dir, run_id
from lora_lab.train import train_sft

# The exit codes of `lora-lab train` (lora_lab/cli.py): 0 completed or diverged, 1 failed, 2 a bad
# config or data set.
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def train(cfg: Config) -> dict:
    """Run (or resume, or skip) one run, SFT or (task=rl) RL; returns its summary. Never raises for
    a diverged run; a failure is recorded in summary.json and re-raised."""
    started = not distributed.current().world_size > 1 and distributed.world_size_from_env() > 1
    env, _ = distributed.setup(cfg.train.device)
    rid = run_id(cfg)
    # Several processes: rank 0 alone writes the run directory; the others read it (shared filesystem).
    rd = RunDir(run_dir(cfg)) if env.is_main else ReadOnlyRunDir(run_dir(cfg))
    try:
        # A first look without the lock skips a finished run at once (no pre-flight, no data)...
        done = _finished(cfg, rid, rd)
        if done:
            return done
        preflight(cfg)
        # A data set that cannot be used (not available offline, wrong schema, too many malformed rows)
        # raises DataError here: before the run directory is written or the model loaded (CLI exit 2).
        rows = run_rows(cfg)
        check_rows(cfg, rows)  # a batch the rows can fill, a max_seq_len that leaves targets
        rd.lock()
        distributed.barrier()  # rank 0 holds the lock (or has raised RunBusy) before anyone goes on
        try:
            # ...and the decision to train is taken under the lock: a launch that overlapped the end
            # of the same run finds its summary now, and never clears it to train again.
            done = _finished(cfg, rid, rd, rebuild=True)
            if done:
                return done
            if cfg.task == "rl":
                from lora_lab.rl import train_rl  # RL's sampler and rewards load only for RL runs

                return train_rl(cfg, rid, rd, rows)
            return train_sft(cfg, rid, rd, rows)
        finally:
            rd.unlock()
    finally:
        if started:
            distributed.teardown()


def _finished(cfg: Config, rid: str, rd: RunDir, rebuild: bool = False) -> dict | None:
    """The summary of a completed or diverged run, or None. With rebuild (under the lock), a run that
    finished but lost its summary.json gets it back from its final checkpoint instead of training
    again."""
    try:
        done = rd.summary()
    except CorruptFile as exc:
        # Replaced when the run finishes (or rebuilt below from its final checkpoint).
        if distributed.current().is_main:
            print(f"{rid}: {exc}; ignoring it", file=sys.stderr)
        done = None
    rebuilt = None
    if rebuild and not (done and done.get("status") in FINAL_STATUSES) and distributed.current().is_main:
        rebuilt = summary_from_final(cfg, rid, rd)
        if rebuilt:
            rd.write_summary(rebuilt)
    done = distributed.broadcast_object(rebuilt or done)
    if not (done and done.get("status") in FINAL_STATUSES):
        return None
    if distributed.current().is_main:
        final = ("final reward", done.get("final_reward")) if cfg.task == "rl" else ("final train loss", done.get("final_train_loss"))
        how = "summary rebuilt from its final checkpoint; " if rebuilt else ""
        print(f"{rid}: already {done['status']} ({how}{final[0]} {final[1]}); skipping", file=sys.stderr)
    return done


def failure_record(paths: Iterable[Path], exc: BaseException) -> Path | None:
    """The summary.json in which one of these runs recorded this very failure, if one did: a run
    that failed before its directory was written (or on a rank that does not write) has none, and an
    older summary.json there would point at another failure. Latest path first."""
    error = f"{type(exc).__name__}: {exc}"
    for path in reversed(list(paths)):
        rd = RunDir(path)
        try:
            summary = rd.summary()
        except (CorruptFile, OSError):
            continue
        if summary and summary.get("status") == "failed" and summary.get("error") == error:
            return rd.summary_path
    return None


def outcome(cfg: Config) -> dict:
    """One run as `lora-lab train` runs it, for a process that goes on to other runs (a sweep's
    worker, a packed SLURM job): {run_id, status, code, error, record, steps}, with `lora-lab
    train`'s exit code in `code` and the same classes of failure (a bad config or data set: 2; a run
    busy in another process or failed: 1, with the summary.json that recorded the failure). Ctrl-C,
    SIGTERM and SystemExit (a SLURM requeue) are not outcomes: they propagate, and the run stays
    unfinished."""
    rid = run_id(cfg)
    out = {"run_id": rid, "status": None, "code": EXIT_FAILED, "error": None, "record": None, "steps": None}
    try:
        summary = train(cfg)
    except ConfigError as exc:
        return {**out, "status": "config error", "code": EXIT_CONFIG, "error": str(exc)}
    except DataError as exc:  # before the run starts (run_rows), or recorded as failed
        record = failure_record([run_dir(cfg)], exc)
        return {**out, "status": "failed" if record else "data error", "code": EXIT_CONFIG, "error": str(exc),
                "record": str(record) if record else None}
    except RunBusy as exc:
        return {**out, "status": "busy", "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - train() recorded it in summary.json where it could
        record = failure_record([run_dir(cfg)], exc)
        return {**out, "status": "failed", "error": f"{type(exc).__name__}: {exc}", "record": str(record) if record else None}
    status = summary.get("status")
    return {**out, "status": status, "code": EXIT_OK if status in FINAL_STATUSES else EXIT_FAILED,
            "error": summary.get("error"), "steps": summary.get("steps")}
