"""LR refinement: learning rates added around each arm's optimum until it is bracketed and narrow
(`lora-lab sweep <experiment> --refine`; `lora-lab reproduce` refines by default).

An LR U-curve is only as good as its points near the optimum: an optimum at an edge of the grid is a
bound, not a point (lora_lab/curves.py OPEN_EDGES: the claims call it inconclusive), and one between
points a half-decade apart is known only to within ~3x either way. Refinement adds LRs where the
grid's results ask for them, as ordinary run directories in the experiment's directory, which
`lora-lab status` lists and `lora-lab analyze` reads with the grid's.

The rule, stated before any data:
- An *arm* is the set of an experiment's runs that differ only in `optim.lr` and `train.seed`: the
  runs' identity (lora_lab/runs.py `identity`, what decides what a run computes) with those two keys
  taken out.
- An arm's *score* at an LR is the mean over its seeds of what the analysis judges. SFT: the final
  train loss (the mean over the last 10% of steps, lora_lab/results.py `final_loss`), lower is
  better, or the final eval loss where the experiment file says its analysis judges that
  (`hydra.sweeper.refine_score: final_eval_loss`, as tiny/capacity's C9 does). RL (task=rl): the final validation accuracy where the arm's runs have one
  (`final_val_accuracy`), else the final held-out accuracy (`final_eval_accuracy`), else the final
  train reward, higher is better. A diverged run counts as the worst score (+inf loss, -inf
  accuracy), as does a run without the number. An LR is scored once all of its runs have finished
  (completed or diverged); an arm is refined once all of its LRs are.
- Each round, per arm: if the best LR is the lowest (highest) of the arm's LRs, the LR one step below
  (above) it is added, the step being the smallest ratio between adjacent LRs of the arm (sqrt(10),
  a half-decade, when the arm has one LR, which is then both lowest and highest; when every LR
  diverged, only the step below the lowest). Else, if the ratio between the best LR's two neighbours
  exceeds the refine factor, the geometric midpoints between the best LR and each neighbour are
  added. A new LR is rounded to 2 significant digits and skipped if the arm has it already; its runs
  copy the arm's config with only optim.lr replaced, once per seed of the arm.
- An arm stops when its optimum is bracketed by neighbours at most the refine factor apart, or after
  the refine rounds (REFINE_ROUNDS), and the sweep says which. The factor is `--refine-factor` where
  given, else the experiment file's `hydra.sweeper.refine_factor`, else REFINE_FACTOR; a factor of
  infinity (`.inf` in the file, `inf` on the command line) stops an arm as soon as its best LR is
  interior: what experiments that read an arm's best loss, not its optimal LR, need.

REFINE_FACTOR = 4 asks for each neighbour within ~2x of the best LR, finer than the 2x within which
C2 calls the optimal LR rank-independent. A half-decade grid (neighbours 10x apart) gets one round of
midpoints (then ~3.2x apart: 1.7e-3 and 5.5e-3 around 3e-3 are 3.24x apart after rounding, which is
why the factor is not sqrt(10)); a decade grid gets two.

Rounds are recorded nowhere: each invocation replays them from the grid (finished runs do not change
their scores), so a relaunch, an interrupted round or a SLURM sweep run again after its jobs ended
finds where it stands. Runs of an arm at LRs the replay does not reach (run by hand, or under other
refine options) are listed by `lora-lab status` and read by the analysis, but do not steer the rounds. The functions here plan; lora_lab/sweep.py and lora_lab/reproduce.py launch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_lab.config import Config, ConfigError
from lora_lab.runs import FINAL_STATUSES, CorruptFile, RunDir, identity, run_state
from lora_lab.slurm import Job

REFINE_FACTOR = 4.0
REFINE_ROUNDS = 2
ONE_LR_STEP = math.sqrt(10.0)  # a half-decade: the step from an arm of one LR
# The keys along which an arm's runs differ.
ARM_FREE = ("optim.lr", "train.seed")
# RL scores in order of preference (results.read_run's row keys); the first every completed run of the arm has.
RL_SCORES = ("final_val_accuracy", "final_eval_accuracy", "final_reward_smoothed")
# What an SFT arm may be scored by (hydra.sweeper.refine_score): the final train loss (the default),
# or the final eval loss where that is what the experiment's analysis judges (tiny/capacity, C9).
SFT_SCORES = ("final_loss", "final_eval_loss")
STATES = ("run", "waiting", "bracketed", "stopped")


def check_options(factor: float | None, rounds: int, given: tuple[object, object] | None = None) -> None:
    """ConfigError (exit 2, one line naming the option) for a refine factor <= 1 or rounds < 0;
    `given`: the values as typed, for the message."""
    shown = given or (factor, rounds)
    if factor is not None and not (isinstance(factor, (int, float)) and not math.isnan(factor) and factor > 1):
        raise ConfigError(f"--refine-factor={shown[0]}: expected a number > 1 (the largest ratio between the best "
                          f"LR's neighbours that counts as narrow; inf: stop once the optimum is bracketed; "
                          f"default: the experiment's hydra.sweeper.refine_factor, else {REFINE_FACTOR:g})")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"--refine-rounds={shown[1]}: expected an integer >= 0 (refinement rounds per arm; "
                          f"default {REFINE_ROUNDS})")


def parse_options(factor: str | float | None, rounds: str | int) -> tuple[float | None, int]:
    """--refine-factor and --refine-rounds as given on a command line, checked (check_options); a
    factor of None stays None (each experiment's own, experiment_factor)."""
    try:
        f = None if factor is None else float(factor)
    except (TypeError, ValueError):
        f = math.nan
    try:
        r = int(str(rounds))
    except ValueError:
        r = -1
    check_options(f, r, (factor, rounds))
    return f, r


# -- arms --------------------------------------------------------------------------------------------

def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def lr_text(lr: float) -> str:
    """An LR with the digits it has, at most 2: 1e-03, 1.7e-03 (an override's value, a line of output)."""
    two = f"{lr:.1e}"
    return two.replace(".0e", "e") if two[2] == "0" else two


def rounded(lr: float) -> float:
    """lr to 2 significant digits."""
    return float(f"{lr:.1e}")


def arm_key(cfg: Config) -> str:
    """What the runs of one arm share: their identity without optim.lr and train.seed."""
    d = identity(cfg)
    d["optim"].pop("lr", None)
    d["train"].pop("seed", None)
    return json.dumps(d, sort_keys=True, default=str)


@dataclass
class Arm:
    """The runs of an experiment's grid that differ only in optim.lr and train.seed (arms_of)."""

    jobs: list[Job]

    @property
    def maximize(self) -> bool:
        return self.jobs[0].cfg.task == "rl"

    @property
    def lrs(self) -> list[float]:
        return sorted({j.cfg.optim.lr for j in self.jobs})

    @property
    def seeds(self) -> list[int]:
        return sorted({j.cfg.train.seed for j in self.jobs})

    @property
    def templates(self) -> list[Job]:
        """A run of each seed: what a new LR's runs copy."""
        first: dict[int, Job] = {}
        for j in self.jobs:
            first.setdefault(j.cfg.train.seed, j)
        return [first[s] for s in sorted(first)]

    @property
    def name(self) -> str:
        """The grid's arm and its point without LR and seed: `lora [method=lora lora.rank=4]`."""
        j = self.jobs[0]
        rest = [o for o in j.overrides if _key(o) not in ARM_FREE]
        return f"{j.arm} [{' '.join(rest)}]" if rest else j.arm


def arms_of(jobs: Sequence[Job]) -> list[Arm]:
    """The jobs grouped by arm (arm_key), in the order of their first job."""
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        groups.setdefault(arm_key(j.cfg), []).append(j)
    return [Arm(js) for js in groups.values()]


def refined_job(template: Job, lr: float) -> Job:
    """The template's run at another LR: its Config with only optim.lr replaced, and its grid point
    with `optim.lr=<lr>` in place of its own (or added: Hydra's last override of a key wins), so that
    local workers (the Config) and SLURM jobs (the overrides, composed again) run the same run."""
    cfg = dataclasses.replace(template.cfg, optim=dataclasses.replace(template.cfg.optim, lr=lr))
    overrides = [o for o in template.overrides if _key(o) != "optim.lr"] + [f"optim.lr={lr_text(lr)}"]
    return dataclasses.replace(template, overrides=overrides, cfg=cfg, placement=None, resources={})


def new_jobs(arm: Arm, lrs: Sequence[float]) -> list[Job]:
    """The runs of new LRs of an arm: one per LR and seed of the arm."""
    return [refined_job(t, lr) for lr in lrs for t in arm.templates]


# -- the rule ----------------------------------------------------------------------------------------

def next_lrs(scores: Mapping[float, float], maximize: bool = False, factor: float = REFINE_FACTOR
             ) -> tuple[list[float], str]:
    """(the LRs to add, why; or [] and why none) for an arm whose LRs all have scores (the module
    docstring's rule). NaN and the worst infinity count as the worst score."""
    if not scores:
        return [], "no LRs"
    lrs = sorted(scores)
    worst = -math.inf if maximize else math.inf
    vals = [worst if math.isnan(scores[lr]) else float(scores[lr]) for lr in lrs]
    sign = -1.0 if maximize else 1.0
    i = min(range(len(lrs)), key=lambda k: sign * vals[k])  # ties: the lowest LR
    best = lrs[i]
    step = min(b / a for a, b in zip(lrs, lrs[1:])) if len(lrs) > 1 else ONE_LR_STEP
    if all(v == worst for v in vals):
        new, why = [lrs[0] / step], f"every LR diverged (lowest {lr_text(lrs[0])})"
    elif len(lrs) == 1:
        new, why = [best / step, best * step], f"one LR ({lr_text(best)})"
    elif i == 0:
        new, why = [best / step], f"best LR {lr_text(best)} is the lowest"
    elif i == len(lrs) - 1:
        new, why = [best * step], f"best LR {lr_text(best)} is the highest"
    else:
        lo, hi = lrs[i - 1], lrs[i + 1]
        around = f"best LR {lr_text(best)} between {lr_text(lo)} and {lr_text(hi)} ({hi / lo:.3g}x apart"
        if math.isinf(factor):
            return [], f"{around}: bracketed)"
        if hi / lo <= factor:
            return [], f"{around} <= {factor:g}x)"
        new, why = [math.sqrt(lo * best), math.sqrt(best * hi)], f"{around} > {factor:g}x)"
    out: list[float] = []
    for lr in map(rounded, new):
        if not any(math.isclose(lr, x, rel_tol=1e-6) for x in [*lrs, *out]):
            out.append(lr)
    if not out:
        return [], f"{why}, but its new LRs round to LRs it has"
    return out, why


def score_runs(jobs: Sequence[Job], rows: Callable[[Job], dict], maximize: bool,
               column: str = "final_loss") -> dict[float, float]:
    """Score per LR of an arm's finished runs: the mean over its runs (seeds) of the judged number of
    each run's results row (lora_lab/results.py read_run): `column` for SFT, RL_SCORES' first for RL;
    a diverged run, or one without the number, is the worst."""
    worst = -math.inf if maximize else math.inf
    table = [(j.cfg.optim.lr, rows(j)) for j in jobs]
    if maximize:
        completed = [r for _, r in table if r.get("status") == "completed"]
        column = next((c for c in RL_SCORES if all(_number(r.get(c)) is not None for r in completed)), RL_SCORES[-1])
    per_lr: dict[float, list[float]] = {}
    for lr, r in table:
        v = _number(r.get(column))
        if r.get("status") == "diverged" or v is None or math.isnan(v):
            v = worst
        per_lr.setdefault(lr, []).append(v)
    return {lr: sum(vs) / len(vs) for lr, vs in per_lr.items()}


def _number(x: object) -> float | None:
    try:
        return None if x is None or isinstance(x, bool) else float(x)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


@dataclass
class ArmPlan:
    """Where an arm stands: `run` (the runs of round `round` are to be launched: `jobs`), `waiting`
    (for its grid runs to finish), `bracketed` or `stopped` (at the round limit) after `round` rounds."""

    arm: Arm
    state: str
    round: int
    jobs: list[Job]
    why: str

    def line(self) -> str:
        lrs = ", ".join(lr_text(x) for x in sorted({j.cfg.optim.lr for j in self.jobs}))
        if self.state == "run":
            return f"{self.arm.name}: round {self.round} adds {lrs}: {self.why}"
        if self.state == "waiting":
            return f"{self.arm.name}: waits for {self.why}"
        done = f"after {self.round} round{'s' if self.round != 1 else ''}" if self.round else "on the grid"
        return f"{self.arm.name}: {self.state} {done}: {self.why}"


def plan_arm(arm: Arm, rows: Callable[[Job], dict], state: Callable[[Job], str],
             factor: float = REFINE_FACTOR, rounds: int = REFINE_ROUNDS, score: str = "final_loss") -> ArmPlan:
    """Replay the rounds of one arm from its grid: the first round whose runs are not all finished is
    the one to run; an arm whose grid has not finished waits."""
    jobs = list(arm.jobs)
    for r in range(1, rounds + 2):
        waiting = [j for j in jobs if state(j) not in FINAL_STATUSES]
        if waiting:  # round 1 only: a later round is returned below until all its runs have finished
            return ArmPlan(arm, "waiting", r - 1, [], f"{len(waiting)} of its {len(jobs)} runs to finish")
        scores = score_runs(jobs, rows, arm.maximize, score)
        new, why = next_lrs(scores, arm.maximize, factor)
        if not new:
            return ArmPlan(arm, "bracketed", r - 1, [], why)
        if r > rounds:
            return ArmPlan(arm, "stopped", r - 1, [], f"{why}; --refine-rounds={rounds} reached (would add "
                           f"{', '.join(lr_text(x) for x in new)})")
        added = new_jobs(arm, new)
        jobs += added
        if any(state(j) not in FINAL_STATUSES for j in added):
            return ArmPlan(arm, "run", r, added, why)
    raise AssertionError("unreachable: the last round returns")


@dataclass
class Refinement:
    """The plan of every arm of some grids: what the next round launches and where each arm stands."""

    arms: list[ArmPlan]

    @property
    def jobs(self) -> list[Job]:
        """The runs to launch now: the next round of every arm that has one."""
        return [j for a in self.arms if a.state == "run" for j in a.jobs]

    @property
    def rounds(self) -> str:
        """The rounds the runs to launch belong to: `1`, or `1-2` when the arms are at different ones."""
        rs = sorted({a.round for a in self.arms if a.state == "run"})
        return "" if not rs else str(rs[0]) if len(rs) == 1 else f"{rs[0]}-{rs[-1]}"

    def lines(self) -> list[str]:
        return [a.line() for a in sorted(self.arms, key=lambda a: STATES.index(a.state))]

    def counts(self) -> str:
        n = {s: sum(a.state == s for a in self.arms) for s in STATES}
        names = {"run": "to refine", "waiting": "waiting", "bracketed": "bracketed",
                 "stopped": "stopped at the round limit"}
        return ", ".join(f"{n[s]} {names[s]}" for s in STATES if n[s])


def _sweeper(jobs: Sequence[Job]) -> Any:
    from lora_lab.config import compose_dict

    return compose_dict(list(jobs[0].master), return_hydra_config=True).hydra.sweeper


def experiment_score(jobs: Sequence[Job]) -> str:
    """The column an experiment's SFT arms are scored by (`hydra.sweeper.refine_score`: what its
    analysis judges), else final_loss."""
    return stated_score(_sweeper(jobs), jobs[0].cfg.run.experiment) if jobs else SFT_SCORES[0]


def experiment_factor(jobs: Sequence[Job]) -> float:
    """The refine factor an experiment's file states (`hydra.sweeper.refine_factor`), else REFINE_FACTOR."""
    return stated_factor(_sweeper(jobs), jobs[0].cfg.run.experiment) if jobs else REFINE_FACTOR


def stated_score(sweeper: Any, experiment: str) -> str:
    """An experiment's `hydra.sweeper.refine_score`, checked (sweep.expand_jobs checks it before any
    run; a ConfigError names the key and the choices)."""
    stated = sweeper.get("refine_score")
    if stated is None:
        return SFT_SCORES[0]
    if stated not in SFT_SCORES:
        raise ConfigError(f"hydra.sweeper.refine_score={stated} in experiment {experiment}: choose "
                          f"{' or '.join(SFT_SCORES)} (what the experiment's analysis judges)")
    return str(stated)


def stated_factor(sweeper: Any, experiment: str) -> float:
    """An experiment's `hydra.sweeper.refine_factor`, checked, else REFINE_FACTOR."""
    stated = sweeper.get("refine_factor")
    if stated is None:
        return REFINE_FACTOR
    try:
        factor = float(stated)
    except (TypeError, ValueError):
        factor = math.nan
    if math.isnan(factor) or factor <= 1:
        raise ConfigError(f"hydra.sweeper.refine_factor={stated} in experiment {experiment}: expected a "
                          "number > 1, or .inf to stop once each arm's optimum is bracketed")
    return factor


def next_round(jobs: Sequence[Job], factor: float | None = REFINE_FACTOR, rounds: int = REFINE_ROUNDS,
               min_lrs: int = 1) -> Refinement:
    """Where the arms of a grid's jobs (those with at least `min_lrs` LRs) stand and what their next
    round launches, from the run directories: states through lora_lab/runs.py, scores through the
    analysis's loader (results.read_run). factor None: the experiment's own (experiment_factor)."""
    from lora_lab.results import read_run

    check_options(factor, rounds)
    if factor is None:
        factor = experiment_factor(jobs)
    cache: dict[Path, dict] = {}

    def rows(job: Job) -> dict:
        if job.path not in cache:
            cache[job.path] = read_run(job.path)[0]
        return cache[job.path]

    def state(job: Job) -> str:
        return run_state(job.path)["state"]

    arms = [a for a in arms_of(jobs) if len(a.lrs) >= min_lrs]
    score = experiment_score(jobs)
    return Refinement([plan_arm(a, rows, state, factor, rounds, score) for a in arms])


# -- the runs of earlier rounds, for `lora-lab status` ------------------------------------------------

def _stem(run_id: str) -> str:
    """A run id without its LR, seed and hash: the runs of one arm share it."""
    return re.sub(r"_s\d+_[0-9a-f]{8}$", "", re.sub(r"_lr[^_]+", "", run_id))


def found_jobs(jobs: Sequence[Job]) -> list[Job]:
    """The run directories next to the jobs (in their experiments' directories) that are runs of one
    of their arms at another LR: those of refinement rounds, or an LR run by hand. A directory counts
    when it is exactly where the arm's run at its LR and seed goes (so not a run of other settings,
    nor one of an older base model)."""
    grid = {j.path for j in jobs}
    templates: dict[tuple[Path, str, int], list[Job]] = {}
    for arm in arms_of(jobs):
        for t in arm.templates:
            templates.setdefault((t.path.parent, _stem(t.run_id), t.cfg.train.seed), []).append(t)
    out = []
    for parent in sorted({p for p, _, _ in templates}):
        if not parent.is_dir():
            continue
        for d in sorted(parent.iterdir()):
            if d in grid or d.name.startswith(".") or not (d / "config.yaml").is_file():
                continue
            try:
                raw = RunDir(d).config_dict()
                lr, seed = float(raw["optim"]["lr"]), int(raw["train"]["seed"])
            except (CorruptFile, KeyError, TypeError, ValueError):
                continue
            for t in templates.get((parent, _stem(d.name), seed), []):
                job = refined_job(t, lr)
                if job.path == d:
                    out.append(job)
                    break
    return out
