"""How a sweep's runs stand, as `lora-lab sweep`, `status` and `wait` show them: each run's state
(its directory's, or `queued` while a live SLURM job holds it: squeue, lora_lab/slurm.py
queued_runs), the table of runs by state, and the progress line that comes while runs are in
flight, with the steps of the running runs and the time left (`estimate_left`: each run costed by
its own steps at its measured pace).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from lora_lab.config import Config
from lora_lab.runs import FINAL_STATUSES, STATES, run_state
from lora_lab.slurm import Job, Queue, QueuedJob, queued_runs

# Runs that a launch skips; everything else (failed, unfinished, pending) is (re)launched.
DONE = FINAL_STATUSES
# The states status shows: a run directory's (runs.STATES), and `queued` for a run that a SLURM job holds.
SHOWN_STATES = (*STATES[:STATES.index("running") + 1], "queued", *STATES[STATES.index("running") + 1:])


# -- run states ----------------------------------------------------------------------------------

def _slurm_queue(title: str, infos: list[dict] | None = None) -> Queue:
    """queued_runs (with `infos`, the runs' states: only while some run is not finished); says so when
    squeue cannot answer."""
    if infos is not None and all(i["state"] in DONE for i in infos):
        return Queue()
    queue, problem = queued_runs()
    if problem:
        print(f"{title}: {problem}; runs held by queued SLURM jobs cannot be told from pending ones", file=sys.stderr)
    return queue


def shown_state(info: dict, job: QueuedJob | None) -> str:
    """A run's state as status and launches show it: its directory's (runs.run_state), or `queued`
    for a run not finished, running or corrupt that a live SLURM job holds (queued, or started and
    not yet training)."""
    if job is not None and info["state"] not in (*DONE, "running", "corrupt"):
        return "queued"
    return info["state"]


def status_table(infos: list[dict], names: list[str], totals: Sequence[int | None] | None = None) -> str:
    """The runs by state (SHOWN_STATES), one line each: steps (of `totals`, the steps each run takes,
    while it is not finished), the last training value, and a note (an error, a SLURM job)."""
    counts = {s: sum(i["state"] == s for i in infos) for s in SHOWN_STATES}
    lines = [f"{len(infos)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    width = max([len(n) for n in names] + [6])
    lines.append(f"{'run':<{width}}  {'state':<10} {'steps':>11} {'last':>9}  note")
    rows = zip(names, infos, totals or [None] * len(infos))
    for name, i, total in sorted(rows, key=lambda t: (SHOWN_STATES.index(t[1]["state"]), t[0])):
        last = i.get("last")
        last_s = "" if last is None else f"{last:.4f}"
        note = i.get("error", "") or i.get("note", "")
        if i["state"] == "unfinished":
            note = f"resumes from its last checkpoint (step {i.get('step')} logged)"
        steps = i.get("step") or ""
        if total and i["state"] not in (*DONE, "failed", "corrupt"):
            steps = f"{i.get('step') or 0}/{total}"
        lines.append(f"{name:<{width}}  {i['state']:<10} {steps:>11} {last_s:>9}  {note}")
    return "\n".join(lines)


# -- steps and the time left -----------------------------------------------------------------------

def run_steps(cfg: Config) -> int:
    """The optimizer steps a run takes (an estimate where the data set's size is not known yet)."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    if cfg.task == "rl":
        return 50
    return max(1, cfg.train.epochs * max(1, (cfg.data.num_examples or 10_000) // cfg.optim.batch_size))


def run_work(cfg: Config) -> float:
    """A run's relative cost: sequences trained (RL: completions sampled, each ~50x a trained
    sequence). Orders a long job's runs (longest first) and paces its time-left estimate."""
    if cfg.task == "rl":
        return 50.0 * run_steps(cfg) * cfg.rl.prompts_per_step * cfg.rl.group_size
    return float(run_steps(cfg) * cfg.optim.batch_size)


def _steps_key(cfg: Config) -> tuple:
    """What fixes how many steps a run of epochs takes: runs with the same key take the same number."""
    per_step = cfg.rl.prompts_per_step if cfg.task == "rl" else cfg.optim.batch_size
    return (cfg.task, cfg.data.name, cfg.data.num_examples, cfg.data.eval_size, per_step, cfg.train.epochs,
            cfg.train.max_steps)


def total_steps(jobs: Sequence[Job], states: dict[Path, dict]) -> dict[Path, int]:
    """The steps each run takes: its own where it has completed; else, for a run of epochs, those of a
    completed run of the same data and batch (_steps_key); else run_steps's; never fewer than it has logged."""
    seen: dict[tuple, int] = {}
    for j in jobs:
        info = states[j.path]
        if info["state"] == "completed" and info.get("step"):
            seen.setdefault(_steps_key(j.cfg), int(info["step"]))
    out = {}
    for j in jobs:
        info = states[j.path]
        steps = run_steps(j.cfg) if j.cfg.train.max_steps else seen.get(_steps_key(j.cfg), run_steps(j.cfg))
        if info["state"] == "completed" and info.get("step"):
            steps = int(info["step"])
        out[j.path] = max(steps, int(info.get("step") or 0))
    return out


def _kinds(cfg: Config) -> list[tuple]:
    """Keys of the runs whose pace stands for this run's, closest first: the same task, model, data,
    method and sequence length; then the same task."""
    return [(cfg.task, cfg.model.name, cfg.data.name, cfg.method, cfg.data.max_seq_len), (cfg.task,)]


def estimate_left(jobs: Sequence[Job], states: dict[Path, dict], since: float = 0.0, parallel: int | None = None,
                  rates: dict[Path, float] | None = None) -> tuple[float | None, int]:
    """(seconds until the runs of `jobs` that can be costed have ended, or None when none can; how
    many cannot: runs of a task none of whose runs has ended or been timed yet).

    Each run left costs its steps left times its seconds per step: measured while it runs (`rates`,
    seconds per step of the runs in flight), else at the pace of the runs of its kind (_kinds, closest
    first) in seconds per unit of run_work: the completed runs' (launch to summary, start-up
    included) or, before one has completed, the running runs' measured rates. A run's steps are its
    own where a completed run of the same data and batch has shown them, else run_steps's estimate.
    The runs in flight, then the others in launch order, go to `parallel` slots (the local workers;
    else the runs in flight now), each to the slot free first; the time left is when the last ends.
    `since`: the launch's wall time (a failed run counts as ended only if it failed since then)."""
    rates = rates or {}
    totals = total_steps(jobs, states)
    ended_s: dict[tuple, float] = {}
    ended_w: dict[tuple, float] = {}
    flying: dict[tuple, list[float]] = {}
    left = []
    for j in jobs:
        info, unit = states[j.path], run_work(j.cfg) / run_steps(j.cfg)
        if info["state"] in DONE or (info["state"] == "failed" and _mtime(j.path / "summary.json") >= since):
            if info["state"] == "completed" and info.get("wall_s") and info.get("step"):
                for k in _kinds(j.cfg):
                    ended_s[k] = ended_s.get(k, 0.0) + float(info["wall_s"])
                    ended_w[k] = ended_w.get(k, 0.0) + int(info["step"]) * unit
            continue
        if info["state"] == "running" and j.path in rates:
            for k in _kinds(j.cfg):
                flying.setdefault(k, []).append(rates[j.path] / unit)
        left.append((j, info, unit))
    if not left:
        return 0.0, 0

    def pace(cfg: Config) -> float | None:
        for k in _kinds(cfg):
            if k in ended_w:
                return ended_s[k] / ended_w[k]
            if k in flying:
                return sum(flying[k]) / len(flying[k])
        return None

    in_flight, queued, untimed = [], [], 0
    for j, info, unit in left:
        done = (info.get("step") or 0) if info["state"] in ("running", "unfinished") else 0
        steps_left = totals[j.path] - done
        if info["state"] == "running" and j.path in rates:
            cost = steps_left * rates[j.path]
        elif (p := pace(j.cfg)) is not None:
            cost = steps_left * unit * p
        else:
            untimed += 1
            continue
        (in_flight if info["state"] == "running" else queued).append(cost)
    if not in_flight and not queued:
        return None, untimed
    slots = [0.0] * max(1, parallel or 0, len(in_flight))
    for cost in in_flight + queued:
        slots[slots.index(min(slots))] += cost
    return max(slots), untimed


def time_left(jobs: Sequence[Job], states: dict[Path, dict], since: float = 0.0, parallel: int | None = None,
              rates: dict[Path, float] | None = None) -> float | None:
    """estimate_left's seconds, None while some run left cannot be costed."""
    seconds, untimed = estimate_left(jobs, states, since, parallel, rates)
    return None if untimed else seconds


def duration(seconds: float) -> str:
    """`45 s`, `12.5 min`, `3 h 05 min`: a time left as a progress line shows it."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


REFRESH_S = 30.0  # the longest a progress line goes unrefreshed while runs are in flight
SHOWN_RUNNING = 3  # running runs whose steps the progress line shows one by one


class _Watch(threading.Thread):
    """Progress of the whole sweep while the launcher blocks: a line whenever the counts change, and
    every `refresh_s` while runs are in flight, with the steps the running runs have logged (from
    their metrics.jsonl) and the time left (estimate_left, with each running run's seconds per step
    as measured here), so it holds whatever the order and lengths of the runs and however many run
    at a time. `tick` is one look at the run directories (tests call it with a clock of their own)."""

    def __init__(self, jobs: list[Job], every_s: float = 5.0, todo: list[Job] | None = None, workers: int | None = None,
                 refresh_s: float = REFRESH_S, out: Any = None, clock: Any = time.monotonic, label: str = "sweep"):
        super().__init__(daemon=True)
        self.jobs, self.every_s, self.stop = jobs, every_s, threading.Event()
        self.todo = jobs if todo is None else todo
        self.workers, self.refresh_s, self.out, self.clock, self.label = workers, refresh_s, out, clock, label
        self.t0: float | None = None
        self.wall0 = time.time()
        self.last: str | None = None
        self.printed = -float("inf")
        self.seen: dict[Path, tuple[float, int]] = {}  # a running run's first (time, step) seen

    def __enter__(self) -> _Watch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()  # its last line comes before what the sweep prints next

    def run(self) -> None:
        self.t0 = self.clock()
        while not self.stop.wait(self.every_s):
            self.tick()

    def rates(self, now: float, states: dict[Path, dict]) -> dict[Path, float]:
        """Seconds per step of each running run, over the steps it has logged since first seen running."""
        out = {}
        for path, info in states.items():
            step = info.get("step") or 0
            if info["state"] != "running":
                self.seen.pop(path, None)
                continue
            t, first = self.seen.setdefault(path, (now, step))
            if step < first:  # restarted from an earlier checkpoint
                self.seen[path] = (now, step)
            elif step > first:
                out[path] = (now - t) / (step - first)
        return out

    def tick(self, now: float | None = None, states: dict[Path, dict] | None = None,
             shown: dict[Path, str] | None = None) -> str | None:
        """Look at the run directories (or take `states`, and the states to show, e.g. `queued`); print
        and return the progress line if the counts changed or refresh_s has passed with runs in flight."""
        now = self.clock() if now is None else now
        if self.t0 is None:
            self.t0 = now
        states = states or {j.path: run_state(j.path) for j in self.jobs}
        rates = self.rates(now, states)
        shown = shown or {}
        counts: dict[str, int] = {}
        for path, info in states.items():
            s = shown.get(path, info["state"])
            counts[s] = counts.get(s, 0) + 1
        line = ", ".join(f"{n} {s}" for s, n in sorted(counts.items(), key=lambda t: SHOWN_STATES.index(t[0])))
        timed = [j for j in self.jobs if j.cfg is not None]  # wait: a queued run's directory may not exist yet
        flying = [j for j in timed if states[j.path]["state"] == "running"]
        if line == self.last and not (flying and now - self.printed >= self.refresh_s):
            return None
        done = sum(counts.get(s, 0) for s in DONE)
        text = f"[{self.label} {now - self.t0:6.0f}s] {done}/{len(self.jobs)} done: {line}"
        if flying:
            totals = total_steps(timed, states)
            steps = [(states[j.path].get("step") or 0, totals[j.path]) for j in flying]
            if len(steps) <= SHOWN_RUNNING:
                text += "; running " + ", ".join(f"{s}/{n}" for s, n in steps) + " steps"
            else:
                text += f"; {len(steps)} running at {sum(s for s, _ in steps)}/{sum(n for _, n in steps)} steps"
        if done < len(self.jobs):
            todo = [j for j in self.todo if j.path in states and j.cfg is not None]
            left, untimed = estimate_left(todo, states, self.wall0, self.workers, rates)
            untimed += sum(j.cfg is None and states[j.path]["state"] not in DONE for j in self.jobs)
            if left is not None and (left > 0 or not untimed):
                text += f"; ~{duration(left)} left"
                if untimed:
                    text += f" + {untimed} run{'s' if untimed > 1 else ''} not timed yet"
                if self.workers:
                    text += f" ({self.workers} worker{'s' if self.workers > 1 else ''})"
        print(text, file=self.out or sys.stderr, flush=True)
        self.last, self.printed = line, now
        return text


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
