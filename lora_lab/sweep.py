"""Sweeps: an experiment's grid -> one Config per run -> launched through Hydra's submitit launcher.

An experiment is a Hydra config file, experiments/<scale>/<figure>.yaml (package _global_): the
fixed settings of a paper figure plus its grid in `hydra.sweeper` (shared `params` and named
`grids`, the arms; see SweepGridConfig in lora_lab/config.py). `lora-lab sweep` expands the grid,
finds each run's directory (the run_id comes from the resolved config), skips runs that completed or
diverged, relaunches failed or unfinished ones (they resume from their checkpoints) and sends the
rest to be run: on this machine by `max_parallel` worker processes that each import torch once and
run their share of the grid one run after another (lora_lab/pool.py, lora_lab/worker.py;
`workers=false`: one submitit_local process per run, as before workers), on a cluster through Hydra's
`submitit_slurm` launcher with the profile slurm/<cluster>.yaml (its `runs_per_job` packs several
runs into one job). Ctrl-C (or SIGTERM) stops a local sweep: nothing more starts, the runs in flight
stop and stay unfinished (exit code 130, or 143), and the same command resumes them. On SLURM,
`--detach` submits the jobs and returns at once: each job writes its runs' directories, its line in
runs.jsonl and the copies of its runs that other experiments share, so nothing waits on this
process; `lora-lab status` shows the runs (queued, running, ...) and `lora-lab wait` blocks until
none is queued or running. A run that a live process holds (its lock) or a live SLURM job holds
(squeue: each job's comment names its runs, lora_lab/slurm.py) is never launched twice. While runs
are in flight a progress line comes at least every 30 s: the steps of the running runs and the time
left, each run costed by its own steps at its measured pace (`estimate_left`).

    lora-lab sweep tiny/rank --dry-run                    # the runs and their states, nothing launched
    lora-lab sweep my_sweep.yaml --dry-run                # an experiment file anywhere (docs/own-sweep.md)
    lora-lab sweep tiny/rank                              # local; a second call launches nothing
    lora-lab sweep tiny/rank 'lora.rank=1,4' optim.lr=3e-3 train.max_steps=8   # shrink the grid
    lora-lab sweep tiny/rank workers=false                # one process per run (the fixed cost each time)
    lora-lab sweep tiny/rank launcher=slurm cluster=local # SLURM (slurm/local_cluster.sh up)
    lora-lab sweep tiny/rank launcher=slurm cluster=local --detach   # submit and return; then:
    lora-lab wait tiny/rank                               # until no run is queued or running (exit 0: all completed)
    lora-lab sweep paper/rank_tulu3_llama8b arms=full launcher=slurm cluster=big   # one arm of the grid
    lora-lab sweep paper/rank_tulu3_llama8b launcher=slurm cluster=example-gpu --dry-run   # each run's GPUs
    lora-lab status tiny/rank      # or a directory: lora-lab status runs/tiny/rank

Refinement (`--refine`): LR U-curves need points where the optimum is, so after the grid has run,
learning rates are added around each arm's optimum until it is bracketed and narrow, as ordinary run
directories of the experiment (listed by `lora-lab status`, read by `lora-lab analyze`). The rule,
stated before any data (lora_lab/refine.py):
- an arm is the set of the grid's runs that differ only in optim.lr and train.seed;
- its score at an LR is the mean over its seeds of what the analysis judges: SFT, the final train
  loss (mean of the last 10% of steps), lower is better; RL, the final validation accuracy where the
  runs have it, else the final held-out accuracy, higher is better; a diverged run is the worst. An
  LR is scored once all of its runs have finished, an arm refined once all of its LRs are;
- each round, per arm: if the best LR is the lowest (highest), the LR one step below (above) it is
  added, the step being the arm's smallest ratio between adjacent LRs (sqrt(10) for an arm of one
  LR); else, if the best LR's neighbours are more than --refine-factor apart (default 4: each within
  ~2x of the best; a half-decade grid gets one round of midpoints, a decade grid two), the geometric
  midpoints between the best LR and each neighbour. New LRs are rounded to 2 significant digits
  (run ids: lr1.7e-3) and skipped if present; their runs copy the arm's config with only optim.lr
  replaced, once per seed;
- an arm stops when bracketed and narrow, or after --refine-rounds rounds (default 2). The factor is
  --refine-factor where given, else the experiment file's `hydra.sweeper.refine_factor`; `inf` (`.inf`
  in a file) stops an arm once its best LR is interior: the tiny experiments whose claims read an
  arm's best result rather than its optimal LR (all but tiny/rank) state it.
Locally the rounds follow one another in one command, each through the same workers (Ctrl-C and
resume as above); a second `--refine` launches nothing once every arm has stopped. On SLURM each
command submits what is missing of the grid or else the next round: run it again after those jobs
end. `--dry-run --refine` shows the grid and, once the grid (or a round) has finished, the runs the
next round would add.

    lora-lab sweep tiny/rank --refine                     # the grid, then rounds until every arm is bracketed
    lora-lab sweep tiny/rank --refine --dry-run           # what the next round would add
    lora-lab sweep tiny/rank --refine --refine-rounds 1 --refine-factor 3.5

On SLURM each run gets the GPUs its arm sets (`launcher.gpus_per_node`, `launcher.nodes` in the
arm), else the fewest whose memory estimate fits the profile's GPUs (lora_lab/slurm.py place_jobs; docs/sweeps.md).
Overrides on the command line that name a grid axis replace that axis in the arms that have it
(`lora.rank=1,4` shrinks the LoRA arm and leaves the FullFT arm alone); other overrides apply to
every run, and one in sweep syntax (`train.seed=0,1`) adds an axis to every arm.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import copy
import datetime as dt
import itertools
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from lora_lab.checks import check_run_root
from lora_lab.config import (CONF_DIR, EXPERIMENTS_DIR, Config, ConfigError, check_trainable, compose_dict,
                             experiment_file, experiment_overrides, from_dictconfig, is_experiment_file, one_line)
from lora_lab.pool import SweepInterrupted, interrupt_once, run_pool, run_workers
from lora_lab.refine import REFINE_FACTOR, REFINE_ROUNDS, found_jobs, next_round, parse_options
from lora_lab.runs import FINAL_STATUSES, STATES, RunDir, find_run_dirs, run_dir, run_id, run_state
from lora_lab.shared import share
from lora_lab.slurm import (Job, Queue, QueuedJob, arm_requests, cluster_overrides, job_comment, pack_jobs, place_jobs,
                            placement_note, queued_runs, runs_per_job, submit, submitted_near, write_record)

LAUNCHERS = ("local", "slurm")
# Runs that a launch skips; everything else (failed, unfinished, pending) is (re)launched.
DONE = FINAL_STATUSES
# The states status shows: a run directory's (runs.STATES), and `queued` for a run that a SLURM job holds.
SHOWN_STATES = (*STATES[:STATES.index("running") + 1], "queued", *STATES[STATES.index("running") + 1:])
QUEUED_SHOWN = 10  # queued runs named one by one when a launch skips them


# -- experiments and their grids ---------------------------------------------------------------

def experiment_names() -> list[str]:
    return sorted(str(p.relative_to(EXPERIMENTS_DIR).with_suffix("")) for p in EXPERIMENTS_DIR.glob("*/*.yaml"))


def check_experiment(name: str) -> str:
    """What `+experiments=` selects for an experiment named on the command line: a shipped
    <scale>/<figure> (also when given as the path of its file), or the resolved path of any other
    .yaml file (checked by config.experiment_file). ConfigError, one line, for neither."""
    if is_experiment_file(name):
        path = Path(name).expanduser().resolve()
        if path.parent.parent == EXPERIMENTS_DIR.resolve() and path.suffix == ".yaml" and path.is_file():
            return str(path.relative_to(EXPERIMENTS_DIR.resolve()).with_suffix(""))
        experiment_file(name)
        return str(path)
    if not (EXPERIMENTS_DIR / f"{name}.yaml").is_file():
        names = experiment_names()
        raise ConfigError(f"experiment {name!r}: no file experiments/{name}.yaml; choose one of {', '.join(names)}; "
                          "or give the path of an experiment file (my_sweep.yaml)")
    return name


def _parse(overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except Exception as exc:
        raise ConfigError(str(exc).strip().splitlines()[0]) from None


def _axis(override: Any) -> tuple[str, list[str]]:
    """key and its values as override strings (`optim.lr=1e-3`), for a plain or a sweep override."""
    key = override.get_key_element()
    if override.is_sweep_override():
        if not override.is_discrete_sweep():
            raise ConfigError(f"{key}: only discrete sweeps (a,b,c / choice / range) can be expanded")
        return key.lstrip("+~"), [f"{key}={v}" for v in override.sweep_string_iterator()]
    return key.lstrip("+~"), [override.input_line]


def grid_points(grid: Any, overrides: Sequence[str], only_arms: Sequence[str] | None = None
                ) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(overrides for every run, (arm, override list) per grid point) from `hydra.sweeper` and the
    command line; see the module docstring for how command-line overrides combine with the arms.
    only_arms: keep these arms (grids) only."""
    shared = dict(grid.get("params") or {})
    # An arm's launcher.* keys are its resources (arm_requests), not run overrides.
    arms = {name: {k: v for k, v in dict(axes or {}).items() if not str(k).startswith("launcher.")}
            for name, axes in (grid.get("grids") or {}).items()} or {"grid": {}}
    if only_arms:
        unknown = sorted(set(only_arms) - set(arms))
        if unknown:
            raise ConfigError(f"arms={','.join(unknown)}: no such arm; this experiment has {', '.join(arms)}")
        arms = {name: axes for name, axes in arms.items() if name in only_arms}
    axis_keys = set(shared) | {k for axes in arms.values() for k in axes}
    fixed, replace, added = [], {}, {}
    for o in _parse(overrides):
        key, values = _axis(o)
        if key in axis_keys:
            replace[key] = values
        elif o.is_sweep_override():
            added[key] = values
        else:
            fixed.append(o.input_line)
    points = []
    for arm, axes in arms.items():
        merged = {**shared, **axes}
        expanded = [replace.get(k) or _axis(_parse([f"{k}={v}"])[0])[1] for k, v in merged.items()]
        expanded += list(added.values())
        points += [(arm, list(p)) for p in itertools.product(*expanded)]
    return fixed, points


def _compose_point(master: list[str], point: list[str], cache: dict) -> Any:
    """compose_dict(master + point), fast: Hydra composes once per choice of config groups
    (model=, data=) and the point's plain `key=value` overrides are set on a copy. A full compose
    per run costs ~0.1-0.2 s, which adds up over a paper grid of hundreds of runs."""
    from omegaconf import OmegaConf

    groups = {p.name for p in CONF_DIR.iterdir() if p.is_dir()}
    parsed = _parse(point)
    simple = [o for o in parsed if not o.is_sweep_override() and o.key_or_group not in groups
              and not o.get_key_element().startswith(("+", "~")) and o.package is None]
    rest = [o.input_line for o in parsed if o not in simple]
    key = tuple(rest)
    if key not in cache:
        cache[key] = compose_dict(master + rest)
    dc = cache[key].copy()
    for o in simple:
        if OmegaConf.select(dc, o.key_or_group, default="__missing__") == "__missing__":
            return compose_dict(master + point)  # let Hydra report the bad key in its own words
        OmegaConf.update(dc, o.key_or_group, o.value(), merge=False)
    return dc


def expand_jobs(experiment: str, overrides: Sequence[str] = (), quick: bool = False,
                arms: Sequence[str] | None = None) -> tuple[list[str], list[Job]]:
    """(the overrides every run shares, the grid's runs without duplicates), before any compute.
    quick: apply the experiment's `hydra.sweeper.quick` overrides first (the command line's win).
    arms: only these arms of the grid (e.g. ["full"])."""
    base = [f"+experiments={check_experiment(experiment)}"]
    try:
        grid = compose_dict(base, return_hydra_config=True).hydra.sweeper
    except ConfigError as exc:
        raise ConfigError(f"{experiment}: {exc}") from None
    if quick:
        overrides = [f"{k}={v}" for k, v in (grid.get("quick") or {}).items()] + list(overrides)
    # hydra.launcher.* (e.g. tasks_per_node=2) configure the launcher, not the runs.
    launcher_args = tuple(o for o in overrides if o.lstrip("+").startswith("hydra.launcher."))
    overrides = [o for o in overrides if o not in launcher_args]
    fixed, points = grid_points(grid, overrides, arms)
    requests = arm_requests(grid, experiment)
    master = base + fixed
    jobs, seen, cache = [], {}, {}
    from omegaconf.errors import OmegaConfBaseException

    for arm, point in points:
        try:
            cfg = from_dictconfig(_compose_point(master, point, cache))
            check_trainable(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{experiment} [{' '.join(point)}]: {exc}") from None
        except OmegaConfBaseException as exc:  # a grid value of the wrong type (lora.rank=abc), set on the composed config
            raise ConfigError(f"{experiment} [{' '.join(point)}]: {one_line(exc)}") from None
        path = run_dir(cfg)
        if path in seen:  # e.g. a FullFT run repeated across a LoRA-only axis
            continue
        seen[path] = True
        jobs.append(Job(point, cfg, arm, tuple(master), launcher_args, dict(requests.get(arm, {}))))
    return master, jobs


def expand(experiment: str, overrides: Sequence[str] = (), quick: bool = False,
           arms: Sequence[str] | None = None) -> list[Config]:
    """The resolved Configs of an experiment's grid (what `lora-lab sweep` would run)."""
    return [j.cfg for j in expand_jobs(experiment, overrides, quick, arms)[1]]


# -- run states ----------------------------------------------------------------------------------

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


# -- launching -----------------------------------------------------------------------------------

def run_job(dcfg: Any) -> dict:
    """Hydra task function: one run of the grid, in a submitit job. Never raises (a failed run is
    recorded in its summary.json), so that one bad run does not stop the rest of a batch."""
    import torch

    from lora_lab.launch import train

    if "SLURM_CPUS_PER_TASK" not in os.environ:
        from hydra.core.hydra_config import HydraConfig

        threads = HydraConfig.get().launcher.get("cpus_per_task")
        if threads:
            torch.set_num_threads(int(threads))
    cfg = from_dictconfig(dcfg)
    local = os.environ.get("SUBMITIT_EXECUTOR") == "local"
    try:
        if local:
            interrupt_once()
        summary = train(cfg)
        return {"run_id": run_id(cfg), "status": summary.get("status")}
    except KeyboardInterrupt:
        if not local:
            raise
        # A stopped local sweep (_stop_runs): the run stays unfinished (train() wrote no summary).
        # A result lets the launcher return at once instead of waiting for one that never comes.
        return {"run_id": run_id(cfg), "status": "interrupted"}
    except Exception as exc:  # recorded by train() in summary.json
        return {"run_id": run_id(cfg), "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


class PackedRuns:
    """The Hydra task function of a sweep whose SLURM jobs hold several runs (`runs_per_job`): job n
    runs its own grid point (the config Hydra composed for it) and then the other runs of its pack,
    one after another in the job's process (lora_lab/worker.py run_pack, a local worker's code). A
    requeued job runs its pack again: the finished runs are skipped by their run directories, the
    interrupted one resumes from its checkpoint."""

    def __init__(self, rest: dict[int, list[dict]]):
        self.rest = rest  # job number -> the resolved configs of the pack's other runs

    def __call__(self, dcfg: Any) -> dict:
        from hydra.core.hydra_config import HydraConfig

        from lora_lab.worker import run_pack

        configs = [from_dictconfig(dcfg)] + [from_dictconfig(d) for d in self.rest.get(HydraConfig.get().job.num, [])]
        runs = run_pack(configs)
        worst = next((r for r in runs if r["status"] not in DONE), runs[0])
        return {"run_id": runs[0]["run_id"], "status": worst["status"], "error": worst.get("error"), "runs": runs}


class SlurmRuns:
    """What a detached SLURM job runs (`sweep --detach`): its runs one after another in the job's
    process, as a packed job's (lora_lab/worker.py run_config, the process's state put back before
    each), and after each what the sweep's process does for the runs it waits for: a finished run is
    copied into the experiments that share it (lora_lab/shared.py), and a line per run ended goes to
    the sweep's runs.jsonl. Nothing is left for a process that waits: a run's directory is complete
    when its job ends. A requeued job (time limit, preemption: `checkpoint`) runs its pack again: the
    finished runs are skipped, the interrupted one resumes."""

    def __init__(self, log: str):
        self.log = log  # <sweep dir>/runs.jsonl

    def __call__(self, configs: list[dict], copies: list[list[dict]]) -> dict:
        from lora_lab.distributed import env_from_environ, world_size_from_env
        from lora_lab.launch import outcome
        from lora_lab.worker import Baseline, run_config

        # A run of several tasks (FSDP2) is never packed (pack_jobs): every task trains it, rank 0 records it.
        several = world_size_from_env() > 1
        baseline = None if several else Baseline()
        runs = []
        for d, twins in zip(configs, copies):
            cfg = from_dictconfig(d)
            before = run_state(run_dir(cfg))["state"]  # a requeued pack meets its finished runs again
            result = outcome(cfg) if several else run_config(cfg, baseline)
            runs.append(result)
            if env_from_environ().is_main:
                self.ended(cfg, result, [from_dictconfig(t) for t in twins], logged=before in DONE)
        return {"runs": runs}

    def ended(self, cfg: Config, result: dict, twins: list[Config], logged: bool) -> None:
        """After a run: copy it to its twins if it finished, and (unless an earlier attempt of the job
        did) append its line to runs.jsonl."""
        from lora_lab.shared import SharePlan

        held = [(Job([], t), Job([], cfg)) for t in twins]
        if result["status"] in DONE:
            SharePlan(held=held).fill()
        if logged:
            return
        line = {k: result.get(k) for k in ("run_id", "status", "code", "error", "record", "steps", "wall_s")}
        copied = [str(j.path) for j, _ in held if run_state(j.path)["state"] in DONE]
        with open(self.log, "a") as f:
            f.write(json.dumps({**line, "slurm_job_id": _slurm_job_id(), "host": os.uname().nodename,
                                "copied_to": copied, "ended_at": dt.datetime.now().isoformat(timespec="seconds")}) + "\n")

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on SIGUSR2 (time limit, preemption): requeue this job as it was submitted."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _slurm_job_id() -> str | None:
    """This SLURM job's id as squeue shows it (`123_4` for an array element)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def resource_groups(packs: list[list[Job]]) -> list[tuple[int, list[list[Job]]]]:
    """(index of the first pack, the packs) of each run of consecutive packs with the same resources:
    one job array each."""
    groups: list[tuple[int, list[list[Job]]]] = []
    for i, pack in enumerate(packs):
        if groups and groups[-1][1][-1][0].resources == pack[0].resources:
            groups[-1][1].append(pack)
        else:
            groups.append((i, [pack]))
    return groups


def submit_detached(params: dict, packs: list[list[Job]], record: Path, copies: dict[Path, list[Job]]) -> list[str]:
    """Submit the packs as SLURM job arrays running SlurmRuns (one array per set of resources, as
    launch_by_resources groups them, with a submitit_slurm launcher's settings) and return at once,
    printing each array's job ids. Returns a line per array that could not be submitted."""
    fn = SlurmRuns(str(record.parent / "runs.jsonl"))
    problems = []
    for start, batch in resource_groups(packs):
        settings = {**params, **batch[0][0].resources, "comment": job_comment(record, start)}
        args = [([j.cfg.to_dict() for j in pack], [[c.cfg.to_dict() for c in copies.get(j.path, [])] for j in pack])
                for pack in batch]
        runs = sum(map(len, batch))
        try:
            ids = submit(settings, fn, args)
        except Exception as exc:  # noqa: BLE001 - sbatch refused it (a bad partition, account, limit)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            problems.append(f"{runs} run(s) in {len(batch)} job(s) from #{start}: not submitted: "
                            f"{type(exc).__name__}: {first}")
            continue
        shown = ids[0] if len(ids) == 1 else f"{ids[0].partition('_')[0]}_[0-{len(ids) - 1}]"
        print(f"submitted {runs} run{'s' if runs != 1 else ''} in {len(ids)} SLURM job{'s' if len(ids) != 1 else ''}: "
              f"{shown}", flush=True)
    return problems


def _fresh_record(sweep_dir: Path) -> Path:
    """<sweep dir>/slurm-<n>.json, the first n not taken (launches in the same second share a directory)."""
    n = 0
    while (sweep_dir / f"slurm-{n}.json").exists():
        n += 1
    return sweep_dir / f"slurm-{n}.json"


def launch_by_resources(hlauncher: Any, packs: list[list[Job]], run_batch: Any) -> list[str]:
    """Launch SLURM packs (consecutive when they share resources: launch_jobs sorts them) as one job
    array per set of resources, each from a copy of the launcher with the profile's settings updated,
    at the same time (each array blocks until its jobs end). Job numbers stay the packs' indices."""
    groups = resource_groups(packs)
    if len(groups) == 1 and not packs[0][0].resources:
        return run_batch(0, packs)

    def one(start: int, batch: list[list[Job]]) -> list[str]:
        launcher = copy.copy(hlauncher)
        res = batch[0][0].resources
        launcher.params = {**hlauncher.params, **res}
        if int(res.get("tasks_per_node", 1)) * int(res.get("nodes", 1)) > 1:
            launcher.task_function = run_job  # a run of several tasks is never packed (pack_jobs)
        return run_batch(start, batch, launcher)

    with concurrent.futures.ThreadPoolExecutor(len(groups)) as pool:
        futures = [pool.submit(one, start, batch) for start, batch in groups]
        return [line for f in futures for line in f.result()]


def local_parallel(max_parallel: int | None) -> int:
    # Default: one single-threaded run per core, the best throughput for the tiny models here.
    return max_parallel or (os.cpu_count() or 1)


def local_threads(max_parallel: int | None) -> int:
    """torch threads of each local run: the cores shared out among the runs at a time."""
    return max(1, (os.cpu_count() or 1) // local_parallel(max_parallel))


def launcher_overrides(launcher: str, cluster: str | None, max_parallel: int | None, sweep_dir: Path) -> list[str]:
    common = [f"hydra.sweep.dir={sweep_dir}", "hydra.sweep.subdir=${hydra.job.num}"]
    if launcher == "local":
        threads = local_threads(max_parallel)
        return ["hydra/launcher=submitit_local", f"hydra.launcher.cpus_per_task={threads}",
                "hydra.launcher.timeout_min=10080", *common]
    # The profile's array_parallelism, unless max_parallel is given on the command line.
    cap = [f"hydra.launcher.array_parallelism={max_parallel}"] if max_parallel else []
    return ["hydra/launcher=submitit_slurm", *cluster_overrides(cluster or "local"), *cap, *common]


def launch(jobs: list[Job], launcher_args: list[str], parallel: int | None, detach: bool = False,
           copies: dict[Path, list[Job]] | None = None) -> list[str]:
    """Send the jobs through Hydra's submitit launcher. Local (parallel set): `parallel` workers
    (_run_pool); SIGINT or SIGTERM stops them and raises SweepInterrupted. SLURM (parallel None):
    one job array; the cluster profile's array_parallelism caps it; each job's comment names the
    record of its runs (lora_lab/slurm.py queued_runs). Returns one line per job that did not end
    completed or diverged. `detach` (SLURM): submit with the same settings and return at once
    (submit_detached); `copies`: run directory -> the jobs that take a copy of it once it ends."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.types import HydraContext, RunMode

    from lora_lab.config import register_configs, search_path_overrides

    register_configs()
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2("lora-lab", create_config_search_path(str(CONF_DIR)))
    # The launcher's own config needs only the search path (for the jobs' +experiments=...) and its
    # settings: the profile's, then any hydra.launcher.* given on the command line.
    extra = list(dict.fromkeys(o for j in jobs for o in j.launcher_args))
    overrides = [*search_path_overrides(["+experiments=_"]), *launcher_args, *extra]
    cfg = hydra.compose_config("config", overrides=overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=True)
    # runs_per_job (a cluster profile's key, not submitit's): several runs one after another per SLURM job.
    per_job = runs_per_job(cfg.hydra.launcher.get("runs_per_job"), "hydra.launcher")
    tasks = int(cfg.hydra.launcher.get("tasks_per_node") or 1) * int(cfg.hydra.launcher.get("nodes") or 1)
    if parallel is not None or tasks > 1:
        if per_job > 1:
            print(f"runs_per_job={per_job} ignored: {'local runs' if parallel is not None else f'jobs of {tasks} tasks'} "
                  "take one run per job", file=sys.stderr)
        per_job = 1
    packs = pack_jobs(jobs, per_job)
    task: Any = run_job
    if per_job > 1:
        task = PackedRuns({n: [j.cfg.to_dict() for j in pack[1:]] for n, pack in enumerate(packs)})
        print(f"{len(jobs)} runs in {len(packs)} SLURM job{'s' if len(packs) > 1 else ''} of up to {per_job} runs each",
              flush=True)
    HydraConfig.instance().set_config(cfg)
    from hydra._internal.callbacks import Callbacks

    context = HydraContext(config_loader=hydra.config_loader, callbacks=Callbacks(cfg))
    hlauncher = Plugins.instance().instantiate_launcher(config=cfg, hydra_context=context, task_function=task)
    hlauncher.params.pop("runs_per_job", None)  # not a submitit parameter
    runs_record = None
    if parallel is None and type(hlauncher).__name__ == "SlurmLauncher":
        runs_record = _fresh_record(Path(str(cfg.hydra.sweep.dir)))
        write_record(runs_record, packs, copies)
    if detach:
        if runs_record is None:
            raise ValueError("a detached launch needs hydra/launcher=submitit_slurm")
        return submit_detached(hlauncher.params, packs, runs_record, copies or {})

    def run_batch(start: int, batch: list[list[Job]], launcher: Any = None) -> list[str]:
        if runs_record is not None:  # squeue then tells which runs this job holds
            launcher = copy.copy(launcher or hlauncher)
            launcher.params = {**launcher.params, "comment": job_comment(runs_record, start)}
        try:
            # As Hydra's own sweepers do: each job's overrides are the task's followed by its grid point
            # (a pack's first run; PackedRuns brings the others); an experiment file as config.experiment_file
            # registered it, which the job's copy of Hydra's state carries.
            points = [[*experiment_overrides(p[0].master), *p[0].overrides] for p in batch]
            results = (launcher or hlauncher).launch(points, initial_job_idx=start)
        except Exception as exc:  # e.g. a SLURM job cancelled: submitit cannot return its result
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return [f"{sum(map(len, batch))} run(s) in {len(batch)} job(s) from #{start}: {type(exc).__name__}: {first}"]
        out = []
        for pack, res in zip(batch, results):
            if res.status != JobStatus.COMPLETED:
                # The job died: name the pack's runs it left unfinished.
                out += [f"{job.run_id}: {res._return_value!r}" for job in pack if run_state(job.path)["state"] not in DONE]
                continue
            ran = res.return_value.get("runs") or [res.return_value]
            for job, r in zip(pack, ran):
                if r.get("status") not in DONE:
                    record = f" (traceback in {r['record']})" if r.get("record") else ""
                    out.append(f"{job.run_id}: {r.get('status')}: {r.get('error') or ''}{record}")
        return out

    if parallel is None:
        return launch_by_resources(hlauncher, packs, run_batch)
    return run_pool(jobs, parallel, lambda start, batch: run_batch(start, [[j] for j in batch]))


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


# -- commands ------------------------------------------------------------------------------------

def _split_args(argv: list[str], prog: str, doc: str) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="<scale>/<figure> (a file under experiments/), the path of an experiment file "
                                      "(my_sweep.yaml), or for status and wait a directory")
    p.add_argument("overrides", nargs="*",
                   help="Hydra overrides; launcher=local|slurm, cluster=<profile>, max_parallel=N, arms=<arm,...>, "
                        "workers=false (local: a process per run)")
    if prog.endswith("sweep"):
        p.add_argument("--dry-run", action="store_true", help="list the runs and their states; launch nothing")
        p.add_argument("--detach", action="store_true",
                       help="launcher=slurm: submit the jobs and return at once (follow with `lora-lab status`, "
                            "`lora-lab wait`)")
        add_refine_args(p, "after the grid, add LRs around each arm's optimum until it is bracketed and narrow "
                           "(the rule above)")
    if prog.endswith("wait"):
        p.add_argument("--timeout", metavar="S", help="give up after S seconds (exit 1); default: no limit")
        p.add_argument("--poll", metavar="S", default=str(POLL_S),
                       help=f"seconds between looks at the run directories (default {POLL_S:g})")
    p.add_argument("--quick", action="store_true", help="the experiment's smaller quick grid (hydra.sweeper.quick)")
    args = p.parse_intermixed_args(argv)
    if prog.endswith("sweep"):
        args.refine_factor, args.refine_rounds = parse_options(args.refine_factor, args.refine_rounds)
    if prog.endswith("wait"):
        args.timeout = None if args.timeout is None else _seconds(args.timeout, "--timeout", zero=True)
        args.poll = _seconds(args.poll, "--poll")
    arms = [o for o in args.overrides if o.startswith("arms=")]
    args.arms = [a for o in arms for a in o.partition("=")[2].split(",") if a] or None
    args.launcher, args.cluster, args.max_parallel, rest, args.workers = split_launcher_args(
        [o for o in args.overrides if o not in arms])
    return args, rest


def _seconds(text: str, option: str, zero: bool = False) -> float:
    """A number of seconds given on the command line (> 0, or >= 0 with `zero`); ConfigError otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise ConfigError(f"{option}={text}: expected a number of seconds {'>= 0' if zero else '> 0'}")
    return value


def add_refine_args(p: argparse.ArgumentParser, what: str) -> None:
    """--refine (or what `what` says), --refine-factor and --refine-rounds, read as strings: a bad value
    is a one-line ConfigError (refine.parse_options), not argparse's usage."""
    if what:
        p.add_argument("--refine", action="store_true", help=what)
    p.add_argument("--refine-factor", default=None, metavar="F",
                   help="an arm is narrow when its best LR's neighbours are at most F apart (> 1; inf: bracketed is "
                        f"enough; default: the experiment's hydra.sweeper.refine_factor, else {REFINE_FACTOR:g})")
    p.add_argument("--refine-rounds", default=str(REFINE_ROUNDS), metavar="N",
                   help=f"at most N refinement rounds per arm (>= 0; default {REFINE_ROUNDS})")


def split_launcher_args(argv: list[str]) -> tuple[str, str | None, int | None, list[str], bool]:
    """(launcher, cluster, max_parallel, the Hydra overrides, workers) from `key=value` arguments.
    workers=false: a local sweep runs each run in a process of its own (submitit_local)."""
    rest, launcher, cluster, max_parallel, workers = [], None, None, None, True
    for o in argv:
        key, _, value = o.partition("=")
        if key == "launcher":
            if value not in LAUNCHERS:
                raise ConfigError(f"launcher={value}: choose one of {', '.join(LAUNCHERS)}")
            launcher = value
        elif key == "cluster":
            cluster = value
        elif key == "max_parallel":
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"max_parallel={value}: expected a positive integer")
            max_parallel = int(value)
        elif key == "workers":
            if value.lower() not in ("true", "false"):
                raise ConfigError(f"workers={value}: expected true (worker processes that run one run after another) "
                                  "or false (a process per run)")
            workers = value.lower() == "true"
        else:
            rest.append(o)
    if cluster and launcher == "local":
        raise ConfigError(f"cluster={cluster}: a cluster profile needs launcher=slurm")
    return launcher or ("slurm" if cluster else "local"), cluster, max_parallel, rest, workers


def sweep(experiment: str, overrides: Sequence[str] = (), launcher: str = "local", cluster: str | None = None,
          max_parallel: int | None = None, dry_run: bool = False, progress: bool = True, quick: bool = False,
          arms: Sequence[str] | None = None, workers: bool = True, refine: bool = False,
          refine_factor: float | None = None, refine_rounds: int = REFINE_ROUNDS, detach: bool = False) -> int:
    """Expand, report, launch what is not done; with `refine`, then the refinement rounds
    (refine_grids). Returns an exit code (0: every run completed or diverged; `detach`: every run
    not done was submitted)."""
    check_detach(detach, launcher)
    if launcher == "slurm":
        cluster_overrides(cluster or "local")  # a bad profile stops here, before anything runs
    _, jobs = expand_jobs(experiment, overrides, quick, arms)
    where = Path(jobs[0].cfg.run.root) / jobs[0].cfg.run.experiment
    unfinished = [j for j in jobs if run_state(j.path)["state"] not in DONE]
    code = launch_jobs(experiment, jobs, where, launcher, cluster, max_parallel, dry_run, progress, list(overrides),
                       workers=workers, **detach_kwargs(detach))
    follow = " ".join(shlex.quote(a) for a in [experiment, *overrides, *([f"arms={','.join(arms)}"] if arms else []),
                                                *(["--quick"] if quick else [])])
    if not refine:
        if detach and not dry_run:
            print(detach_hint(follow), flush=True)
        return code
    if launcher == "slurm" and unfinished and not dry_run:
        print(f"{experiment}: the grid's {len(unfinished)} unfinished runs are submitted (or running); run this "
              "command again after those jobs end to submit refinement round 1"
              + (f" (`lora-lab wait {follow}` waits for them)" if detach else ""), flush=True)
        return code
    return max(code, refine_grids(experiment, {experiment: jobs}, where, launcher, cluster, max_parallel, dry_run,
                                  progress, overrides, workers, refine_factor, refine_rounds, detach=detach))


def check_detach(detach: bool, launcher: str) -> None:
    """--detach needs launcher=slurm (ConfigError, exit 2): a local sweep's runs live in its own workers."""
    if detach and launcher != "slurm":
        raise ConfigError(f"--detach with launcher={launcher}: a detached launch needs launcher=slurm (and "
                          "cluster=<profile>); a local sweep's runs live in its own worker processes")


def detach_kwargs(detach: bool) -> dict:
    """launch_jobs's keyword for a detached launch (none otherwise)."""
    return {"detach": True} if detach else {}


def detach_hint(follow: str) -> str:
    """What to run after a detached launch; `follow`: the experiment and its overrides."""
    return (f"detached: the jobs run without this process. Progress: lora-lab status {follow}; block until they end: "
            f"lora-lab wait {follow}; then analyze as usual")


def refine_grids(title: str, grids: dict[str, list[Job]], where: Path, launcher: str = "local",
                 cluster: str | None = None, max_parallel: int | None = None, dry_run: bool = False,
                 progress: bool = True, overrides: Sequence[str] = (), workers: bool = True,
                 factor: float | None = None, rounds: int = REFINE_ROUNDS, min_lrs: int = 1, detach: bool = False) -> int:
    """The refinement rounds (lora_lab/refine.py) of grids that have been launched (experiment -> its
    jobs), the arms of every grid together: each round's runs through one launch_jobs. Locally, round
    after round until no arm has another, stopping at a round with runs that did not finish (the same
    command retries them); on SLURM one round, the next one at the next call (`detach`: submitted
    without waiting). Arms with fewer than `min_lrs` LRs are left as they are. Returns an exit code."""
    code, last = 0, None
    while True:
        plans = {name: next_round(js, factor, rounds, min_lrs) for name, js in grids.items()}
        fixed = [name for name, p in plans.items() if not p.arms]
        if fixed:
            print(f"{title}: not refined (no arm with {min_lrs} LRs or more): {', '.join(fixed)}", flush=True)
        for name, p in plans.items():
            if p.arms:
                print(f"{name}: refinement: {p.counts()}", flush=True)
                for line in p.lines():
                    print(f"  {line}", flush=True)
        rounds_now = sorted({p.rounds for p in plans.values() if p.rounds})
        todo = sorted((j for p in plans.values() for j in p.jobs), key=lambda j: run_work(j.cfg), reverse=True)
        if not todo:
            return code
        label = f"{title} refinement round {'/'.join(rounds_now)}"
        if {j.path for j in todo} == last:  # launched and still not finished: running in another process
            print(f"{title}: refinement round {'/'.join(rounds_now)} is not finished (its runs are running "
                  "elsewhere); run this command again after they end", file=sys.stderr, flush=True)
            return code
        last = {j.path for j in todo}
        code = launch_jobs(label, todo, where, launcher, cluster, max_parallel, dry_run, progress, list(overrides),
                           workers=workers, **detach_kwargs(detach))
        if dry_run:
            return code
        if launcher == "slurm":
            runs = f"{len(todo)} run{'s' if len(todo) != 1 else ''}"
            print(f"{title}: submitted refinement round {'/'.join(rounds_now)} ({runs}); run this command again "
                  "after those jobs end for the next round" + (" (`lora-lab wait` waits for them)" if detach else ""),
                  flush=True)
            return code
        if code:
            print(f"{title}: refinement stopped: round {'/'.join(rounds_now)} has runs that did not finish; the same "
                  "command retries them", file=sys.stderr, flush=True)
            return code


def launch_jobs(title: str, jobs: list[Job], where: Path, launcher: str = "local", cluster: str | None = None,
                max_parallel: int | None = None, dry_run: bool = False, progress: bool = True,
                overrides: Sequence[str] = (), workers: bool = True, detach: bool = False) -> int:
    """Report the jobs' states and launch those not done; launcher files go to <where>/.sweeps/<time>
    (local workers: worker-<slot>.log, each worker's output, and runs.jsonl, a line per run ended;
    SLURM: slurm-<n>.json, the runs of each job, and .submitit/). A run whose lock a live process
    holds is not launched again, nor on SLURM one that a queued or running job holds (squeue).
    `detach` (SLURM): submit and return at once; the jobs write runs.jsonl and copy their finished
    runs to the experiments that share them (SlurmRuns)."""
    infos = [run_state(j.path) for j in jobs]
    queue = _slurm_queue(title, infos) if launcher == "slurm" else Queue()
    shown = [shown_state(i, queue.get(j.path)) for j, i in zip(jobs, infos)]
    todo = [j for j, s in zip(jobs, shown) if s not in DONE and s != "queued"]
    running = [j for j, i in zip(jobs, infos) if i["state"] == "running"]
    counts = {s: sum(x == s for x in shown) for s in SHOWN_STATES}
    # A run another experiment has (lora_lab/shared.py): copied if it finished there, else trained once.
    shared = share(todo, copy=not dry_run)
    todo = shared.launch
    print(f"{title}: {len(jobs)} runs; " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + f"; {len(todo) - len(running)} to launch", flush=True)
    if shared.note():
        print(f"{title}: {shared.note()}", flush=True)
    queued = [(j, queue[j.path]) for j, s in zip(jobs, shown) if s == "queued"]
    if queued and not dry_run:
        print(f"{title}: {len(queued)} run{'s are' if len(queued) > 1 else ' is'} held by SLURM jobs that are queued or "
              "running (squeue): not submitted again", flush=True)
        for j, q in queued[:QUEUED_SHOWN]:
            print(f"  {j.run_id}: {q.note()}", flush=True)
        if len(queued) > QUEUED_SHOWN:
            print(f"  ... and {len(queued) - QUEUED_SHOWN} more (`lora-lab status` lists them)", flush=True)
    if launcher == "slurm":
        place_jobs(todo, cluster)  # GPUs per run from the arm or the memory estimate
    if dry_run:
        rows = [{**i, "state": s, "note": queue[j.path].note() if j.path in queue and s != i["state"] else ""}
                for j, i, s in zip(jobs, infos, shown)]
        print(status_table(rows, [j.run_id for j in jobs], [run_steps(j.cfg) for j in jobs]))
        for j in todo:
            print("  " + placement_note(j) + " ".join(j.overrides))
        return 0
    unfit = [j for j in todo if j.placement is not None and not j.placement.fits]
    for j in unfit:
        print(f"not launched: {j.run_id} ({j.arm}): does not fit: {j.placement.why}", file=sys.stderr)
    # Runs of the same resources next to each other: one job array each (launch_by_resources).
    todo = sorted((j for j in todo if not any(j is u for u in unfit)), key=lambda j: sorted(j.resources.items()))
    if running:
        print(f"{len(running)} runs are running in another process; not launching them again", file=sys.stderr)
        todo = [j for j in todo if j not in running]
    if not todo:
        return 0 if counts["failed"] == 0 and not unfit else 1
    check_run_root(todo[0].cfg.run.root)  # a file or a read-only root: one line, before any launch
    cap = local_parallel(max_parallel) if launcher == "local" else None
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = where / ".sweeps" / stamp
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "jobs.json").write_text(json.dumps({"title": title, "overrides": list(overrides),
                                                     "jobs": [{"run_id": j.run_id, "overrides": j.overrides} for j in todo]}, indent=1))
    if detach:
        return _submit_detached(title, todo, shared.held, cluster, max_parallel, sweep_dir, unfit)
    local_workers = launcher == "local" and workers
    if local_workers:
        cap = min(cap or 1, len(todo))
        threads = local_threads(max_parallel)
        how = (f"{cap} worker process{'es' if cap > 1 else ''} of {threads} torch thread{'s' if threads > 1 else ''}, "
               "each running one run after another")
    elif launcher == "local":
        how = f"at most {cap} at a time, a process per run"
    else:
        how = f"cluster profile {cluster or 'local'}"
    print(f"launching {len(todo)} runs ({launcher}, {how}); launcher files in {sweep_dir}", flush=True)
    try:
        held = {id(j) for j, _ in shared.held}  # trained by their twins: not work of their own
        watched = [j for j in jobs if id(j) not in held]
        with _Watch(watched, todo=todo, workers=cap if local_workers else None) if progress else contextlib.nullcontext():
            if local_workers:
                problems = run_workers(todo, cap, threads, sweep_dir, on_result=_log_result(sweep_dir / "runs.jsonl"))
            else:
                problems = launch(todo, launcher_overrides(launcher, cluster, max_parallel, sweep_dir), cap)
    except SweepInterrupted as exc:
        print(f"{title}: {exc}", file=sys.stderr, flush=True)
        raise
    if launcher == "slurm" and shared.held:  # their twins were submitted, not trained yet
        print(f"{title}: {len(shared.held)} runs are copied from their twins' runs once those end: run this "
              "command again then", flush=True)
    else:
        problems = list(problems) + shared.fill()
    final = [run_state(j.path) for j in jobs]
    counts = {s: sum(i["state"] == s for i in final) for s in STATES}
    print(f"{title}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
    for line in problems:
        print(f"  not done: {line}", file=sys.stderr)
    return 0 if all(i["state"] in DONE for i in final) else 1


def _submit_detached(title: str, todo: list[Job], held: list[tuple[Job, Job]], cluster: str | None,
                     max_parallel: int | None, sweep_dir: Path, unfit: list[Job]) -> int:
    """launch_jobs's detached submission: the jobs of `todo`, each copying its finished run to the
    held jobs it trains (shared runs); returns at once (1 if something could not be submitted)."""
    submitted = {id(j) for j in todo}
    copies: dict[Path, list[Job]] = {}
    for job, twin in held:
        if id(twin) in submitted:
            copies.setdefault(twin.path, []).append(job)
    print(f"submitting {len(todo)} runs (slurm, cluster profile {cluster or 'local'}, detached); launcher files in "
          f"{sweep_dir}", flush=True)
    problems = launch(todo, launcher_overrides("slurm", cluster, max_parallel, sweep_dir), None, detach=True,
                      copies=copies)
    waiting = len(held) - sum(map(len, copies.values()))
    if waiting:  # their twins run in another process, which does not copy them
        print(f"{title}: {waiting} runs are copied from their twins' runs once those end: run this command "
              "again then", flush=True)
    for line in problems:
        print(f"  not submitted: {line}", file=sys.stderr)
    return 1 if problems or unfit else 0


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


def _log_result(path: Path):
    """on_result of run_workers: a JSON line per run that ended in a worker, with its worker and time."""
    lock = threading.Lock()

    def log(result: dict) -> None:
        line = {k: result.get(k) for k in ("run_id", "status", "code", "error", "record", "steps", "wall_s", "pid",
                                           "slot", "attempt")}
        with lock, open(path, "a") as f:
            f.write(json.dumps({**line, "ended_at": dt.datetime.now().isoformat(timespec="seconds")}) + "\n")

    return log


def sweep_main(argv: list[str]) -> int:
    args, overrides = _split_args(argv, "lora-lab sweep", __doc__)
    try:
        return sweep(args.experiment, overrides, args.launcher, args.cluster, args.max_parallel, args.dry_run,
                     quick=args.quick, arms=args.arms, workers=args.workers, refine=args.refine,
                     refine_factor=args.refine_factor, refine_rounds=args.refine_rounds, detach=args.detach)
    except SweepInterrupted as exc:  # launch_jobs has said what it stopped
        return exc.exit_code


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
POLL_S = 5.0  # seconds between wait's looks at the run directories
SQUEUE_EVERY_S = 30.0  # and between its questions to squeue, while a run is neither finished nor running


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
