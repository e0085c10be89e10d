"""`lora-lab status` and `lora-lab wait`: the runs of an experiment's grid (with the LRs that
`sweep --refine` added to its arms), or the run directories below a directory, by state; on SLURM,
the runs that queued or running jobs hold (squeue) as `queued`, also before their directories exist.

    lora-lab status tiny/rank      # or a directory: lora-lab status runs/tiny/rank
    lora-lab wait tiny/rank        # until no run is queued or running (exit 0: all completed)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_lab.config import Config, ConfigError, is_experiment_file
from lora_lab.progress import DONE, _slurm_queue, _Watch, shown_state, status_table, total_steps
from lora_lab.refine import found_jobs
from lora_lab.runs import STATES, RunDir, find_run_dirs, run_state
from lora_lab.slurm import Queue, submitted_near
from lora_lab.sweep import _split_args, expand_jobs


def status_main(argv: list[str]) -> int:
    """`lora-lab status <experiment [overrides] | directory>`: exit 1 while any run failed."""
    args, overrides = _split_args(argv, "lora-lab status", "Runs of an experiment's grid (with the LRs that "
                                  "`sweep --refine` added to its arms), or of a directory, by state; on SLURM, "
                                  "the runs that queued or running jobs hold (squeue) as `queued`.")
    runs, names, notes, queue, _ = _targets(args, overrides, "lora-lab status")
    states = {r.path: run_state(r.path) for r in runs}
    infos = []
    for r in runs:
        info, job = states[r.path], queue.get(r.path)
        if info["state"] in DONE:  # its job is ending
            job = None
        note = "; ".join(n for n in (notes.get(r.path, ""), job.note() if job else "") if n)
        infos.append({**info, "state": shown_state(info, job), "note": note})
    timed = [r for r in runs if r.cfg is not None]
    totals = total_steps(timed, states)
    print(status_table(infos, names, [totals.get(r.path) for r in runs]))
    return 1 if any(i["state"] in ("failed", "corrupt") for i in infos) else 0


@dataclass
class _Found:
    """A run directory found below a directory given to status or wait, or one that a SLURM job holds
    (cfg None where config.yaml cannot be read as a Config, or is not written yet)."""

    path: Path
    run_id: str
    cfg: Config | None


def _targets(args: argparse.Namespace, overrides: list[str], title: str
             ) -> tuple[list[Any], list[str], dict[Path, str], Queue, bool]:
    """(the runs, their names, notes, SLURM's queue, whether SLURM jobs were submitted here) that
    status and wait look at: an experiment's grid with the LRs refinement added to its arms (Jobs),
    or the run directories below a directory (_Found); and in either the runs that live SLURM jobs
    hold there whose directories do not exist yet (a refinement round just submitted). squeue is
    asked only where lora-lab has submitted jobs (slurm.submitted_near)."""
    target = Path(args.experiment)
    if not target.is_dir() and args.experiment.startswith(("/", ".", "~")) and not is_experiment_file(args.experiment):
        raise ConfigError(f"{args.experiment}: no such directory; give a runs directory or an experiment name")
    notes: dict[Path, str] = {}
    if target.is_dir():
        top = target.resolve()
        runs: list[Any] = [_Found(p, str(p.relative_to(top)), None) for p in find_run_dirs([target])]
        slurm = submitted_near([top], down=2)
        inside = lambda p: p.is_relative_to(top)  # noqa: E731
    else:
        _, jobs = expand_jobs(args.experiment, overrides, args.quick, args.arms)
        found = found_jobs(jobs)  # the arms' runs at the LRs that refinement (or a hand) added to the grid
        notes = {j.path: "an LR added to the grid (sweep --refine)" for j in found}
        runs = jobs + found
        dirs = {j.path.parent.resolve() for j in jobs}
        slurm = submitted_near(sorted(dirs))
        inside = lambda p: p.parent in dirs  # noqa: E731
    queue = _slurm_queue(title) if slurm else Queue()
    known = {Path(r.path).resolve() for r in runs} if queue else set()
    for p in sorted(queue):
        if inside(p) and p not in known:
            runs.append(_Found(p, str(p.relative_to(top)) if target.is_dir() else p.name, None))
            notes[p] = "not in the grid as given (a refinement round, or other overrides)" if not target.is_dir() else ""
    if not runs:
        raise ConfigError(f"{target}: no run directories (config.yaml) below it")
    for r in runs:
        if isinstance(r, _Found):
            r.cfg = _config_or_none(r.path)
    return runs, [r.run_id for r in runs], notes, queue, slurm


def _config_or_none(path: Path) -> Config | None:
    """A run directory's config, None where there is none yet or it cannot be read (status shows
    why: run_state); such a run is counted, not timed."""
    try:
        return RunDir(path).config()
    except Exception:  # noqa: BLE001 - missing, damaged, or of another version
        return None


WAIT_DOC = """Block until no run of an experiment's grid (with the LRs `sweep --refine` added to its arms), or
of a directory, is queued or running: a run is running while a process holds its lock, and queued
while a SLURM job that holds it is queued or starting (squeue; lora-lab's jobs name their runs in
their comment). Prints a progress line when the counts change and at least every 30 s while runs
are in flight. Exit 0 when every run completed or diverged, 1 otherwise (a failed or pending run,
or --timeout reached with runs still queued or running), 2 for bad input.

    lora-lab sweep tiny/rank launcher=slurm cluster=local --detach
    lora-lab wait tiny/rank && lora-lab analyze runs/tiny/rank
    lora-lab wait runs/tiny --timeout 3600
"""
SQUEUE_EVERY_S = 30.0  # seconds between wait's questions to squeue, while a run is neither finished nor running


def wait_main(argv: list[str]) -> int:
    """`lora-lab wait <experiment [overrides] | directory> [--timeout S]`: WAIT_DOC."""
    args, overrides = _split_args(argv, "lora-lab wait", WAIT_DOC)
    try:
        runs, names, _, queue, slurm = _targets(args, overrides, "lora-lab wait")
    except ConfigError:
        if not Path(args.experiment).is_dir():
            raise
        print(f"lora-lab wait: {args.experiment}: no run directories below it and no SLURM job holds runs there",
              file=sys.stderr)
        return 1
    asked = time.monotonic()
    watch = _Watch(runs, label="wait")
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        for r in runs:
            if r.cfg is None and (r.path / "config.yaml").is_file():  # a queued run has started
                r.cfg = _config_or_none(r.path)
        states = {r.path: run_state(r.path) for r in runs}
        if slurm and now - asked >= SQUEUE_EVERY_S and any(i["state"] not in (*DONE, "running") for i in states.values()):
            queue, asked = _slurm_queue("lora-lab wait"), now
        shown = {p: shown_state(i, queue.get(p)) for p, i in states.items()}
        busy = [p for p, s in shown.items() if s in ("running", "queued")]
        watch.tick(now, states, shown)
        if not busy:
            break
        if args.timeout is not None and now - t0 >= args.timeout:
            print(f"lora-lab wait: {len(busy)} run{'s' if len(busy) > 1 else ''} still queued or running after "
                  f"{args.timeout:g} s", file=sys.stderr)
            return 1
        pause = args.poll if args.timeout is None else min(args.poll, max(0.0, t0 + args.timeout - now))
        time.sleep(pause)
    counts = {s: sum(i["state"] == s for i in states.values()) for s in STATES}
    print(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
    for name, r in zip(names, runs):
        info = states[r.path]
        if info["state"] not in DONE:
            print(f"  not done: {name}: {info['state']}" + (f": {info['error']}" if info.get("error") else ""),
                  file=sys.stderr)
    return 0 if all(i["state"] in DONE for i in states.values()) else 1
