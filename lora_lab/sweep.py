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
import itertools
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

from lora_lab.config import (CONF_DIR, EXPERIMENTS_DIR, Config, ConfigError, check_trainable, compose_dict,
                             experiment_file, from_dictconfig, is_experiment_file, one_line)
from lora_lab.dispatch import launch_jobs
from lora_lab.pool import SweepInterrupted
from lora_lab.progress import DONE, run_work
from lora_lab.refine import REFINE_FACTOR, REFINE_ROUNDS, next_round, parse_options, stated_factor, stated_score
from lora_lab.runs import run_dir, run_state
from lora_lab.slurm import Job, arm_requests, cluster_overrides

LAUNCHERS = ("local", "slurm")
POLL_S = 5.0  # seconds between wait's looks at the run directories


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
    # An axis of any arm, kept or not, replaces that arm's values only: `--quick arms=full` must not
    # put quick's lora.rank on the FullFT arm.
    axis_keys = set(shared) | {k for axes in arms.values() for k in axes}
    if only_arms:
        unknown = sorted(set(only_arms) - set(arms))
        if unknown:
            raise ConfigError(f"arms={','.join(unknown)}: no such arm; this experiment has {', '.join(arms)}")
        arms = {name: axes for name, axes in arms.items() if name in only_arms}
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
    # What refinement will read after the grid has run, checked before it runs.
    stated_score(grid, experiment)
    stated_factor(grid, experiment)
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


def sweep_main(argv: list[str]) -> int:
    args, overrides = _split_args(argv, "lora-lab sweep", __doc__)
    try:
        return sweep(args.experiment, overrides, args.launcher, args.cluster, args.max_parallel, args.dry_run,
                     quick=args.quick, arms=args.arms, workers=args.workers, refine=args.refine,
                     refine_factor=args.refine_factor, refine_rounds=args.refine_rounds, detach=args.detach)
    except SweepInterrupted as exc:  # launch_jobs has said what it stopped
        return exc.exit_code
