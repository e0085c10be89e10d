"""Runs that experiments share. A run's identity (runs.identity) leaves out run.experiment, so the
same run can belong to two experiments: tiny/batch's batch-32 runs are tiny/rank's runs, and so is
tiny/layers' FullFT reference. Each experiment keeps its own run directory (the run-directory
contract; the analysis gives a run to the experiment its config.yaml names), but the run is trained
once:

    plan = share(todo)        # before a launch: jobs whose run finished elsewhere are filled at once
    launch(plan.launch)       # one job per run id among the rest
    plan.fill()               # after it: each held-back job gets its twin's finished run

A copy is the finished run directory with its big files hard-linked (a finished run's files are never
written again: a resume replaces files, it does not append to them), its config.yaml naming its own
experiment, and meta.json saying where it came from (`copied_from`). Only a completed or diverged
run is copied; a failed or unfinished one is not, and a job whose own directory already holds an
unfinished run resumes it instead of taking a copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_lab.config import load_config, to_yaml
from lora_lab.runs import CorruptFile, identity, read_json, run_state, write_json_atomic

FINISHED = ("completed", "diverged")
_SKIP = (".lock",)  # never copied: the lock of the source's last writer
_REWRITTEN = ("config.yaml", "meta.json")


def experiment_root(path: Path, experiment: str) -> Path:
    """<run.root> of a run directory <run.root>/<experiment>/<run_id>."""
    return path.parents[len(Path(experiment).parts)]


def finished_twin(job: Any) -> Path | None:
    """A completed or diverged run of the job's id, with the same identity, in another experiment's
    directory under the same run root; None if there is none."""
    path = Path(job.path)
    root = experiment_root(path, job.cfg.run.experiment)
    mine = identity(job.cfg)
    for depth in (1, 2, 3):  # experiments are named <scale>/<figure>, or deeper or flatter
        for cand in sorted(root.glob("/".join(["*"] * depth + [path.name]))):
            if cand == path or not cand.is_dir() or run_state(cand)["state"] not in FINISHED:
                continue
            try:
                if identity(load_config(cand / "config.yaml")) == mine:
                    return cand
            except Exception:  # noqa: BLE001 - an unreadable twin is no twin; status reports it
                continue
    return None


def copy_run(source: Path, job: Any) -> None:
    """Give the job the finished run in `source`: written beside the job's directory, then renamed
    into place, so that a crash never leaves a half copy that looks like a run."""
    dest = Path(job.path)
    tmp = dest.parent / f".{dest.name}.copy-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for src in sorted(source.rglob("*")):
        rel = src.relative_to(source)
        if rel.name in _SKIP or rel.name.endswith(".tmp") or str(rel) in _REWRITTEN:
            continue
        out = tmp / rel
        if src.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, out)  # an 8B FullFT final checkpoint is 16 GB: never copied byte by byte
        except OSError:
            shutil.copy2(src, out)
    (tmp / "config.yaml").write_text(to_yaml(job.cfg))
    try:
        meta = read_json(source / "meta.json") or {}
    except CorruptFile:
        meta = {}
    write_json_atomic(tmp / "meta.json", {**meta, "copied_from": str(source)})
    if dest.exists():  # an empty or never-started directory (run_state "pending"): replaced
        shutil.rmtree(dest)
    os.replace(tmp, dest)


@dataclass
class SharePlan:
    """What a launch does about shared runs: `launch` the jobs to train, `copied` those filled from a
    finished twin before it, `held` (job, the job that trains its run) filled after it by fill()."""

    launch: list = field(default_factory=list)
    copied: list = field(default_factory=list)
    held: list = field(default_factory=list)
    dry: bool = False  # planned only (a dry run): nothing was copied

    def fill(self) -> list[str]:
        """Copy each held job's run from the job that trained it, if that run finished; returns one
        line per held job left without a run (its twin failed or was stopped: launched next time)."""
        left = []
        for job, twin in self.held:
            if run_state(Path(twin.path))["state"] in FINISHED and run_state(Path(job.path))["state"] == "pending":
                copy_run(Path(twin.path), job)
            elif run_state(Path(job.path))["state"] not in FINISHED:
                left.append(f"{job.run_id} ({job.cfg.run.experiment}): its twin in {twin.cfg.run.experiment} did not finish")
        return left

    def note(self) -> str:
        """One line for the launch's output (empty when nothing is shared)."""
        parts = []
        if self.copied:
            parts.append(f"{len(self.copied)} {'to copy' if self.dry else 'copied'} from another experiment's finished run")
        if self.held:
            parts.append(f"{len(self.held)} trained once for two experiments (copied when done)")
        return ("shared runs: " + "; ".join(parts)) if parts else ""


def share(todo: Sequence[Any], copy: bool = True) -> SharePlan:
    """Split the jobs to launch: a pending job whose run finished in another experiment is filled
    now (copy=False: only planned, for a dry run); among the rest, one job per run id and identity
    is launched and the others are held for fill(). A job with a run of its own (unfinished, failed)
    is always launched: it resumes or reruns its own directory."""
    plan = SharePlan(dry=not copy)
    states = {id(j): run_state(Path(j.path))["state"] for j in todo}
    key = lambda job: (job.run_id, repr(sorted(identity(job.cfg).items())))  # noqa: E731
    # A job with a run of its own trains its run id here; a pending twin waits for it.
    first: dict[tuple[str, str], Any] = {}
    for job in todo:
        if states[id(job)] != "pending":
            first.setdefault(key(job), job)
    for job in todo:
        if states[id(job)] != "pending":
            plan.launch.append(job)
            continue
        twin = finished_twin(job)
        if twin is not None:
            if copy:
                copy_run(twin, job)
            plan.copied.append(job)
            continue
        k = key(job)
        if k in first and first[k] is not job:
            plan.held.append((job, first[k]))
        else:
            first[k] = job
            plan.launch.append(job)
    return plan
