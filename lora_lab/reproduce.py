"""`lora-lab reproduce`: every experiment of a scale through the sweep machinery, then the analysis
and the claims scorecard. A rerun resumes: finished runs are skipped, unfinished ones resume from
their checkpoints. Locally the runs go to worker processes that each run one run after another
(lora_lab/pool.py); the progress line's time left counts the steps the runs in flight have done.

    lora-lab reproduce                      # tiny scale, here (2 cores: ~30 min), runs/ -> runs/tiny/analysis
    lora-lab reproduce --quick              # smaller grids, fewer steps (~5 min), runs-quick/
    lora-lab reproduce --scale paper launcher=slurm cluster=<profile>   # the paper's grids on a cluster
    lora-lab reproduce --scale paper launcher=slurm cluster=<profile> --detach   # submit them, return at once
    lora-lab reproduce --only tiny/rank,tiny/batch    # some experiments only
    lora-lab reproduce --no-refine          # the grids only
    lora-lab reproduce --only tiny/width,tiny/alpha   # beyond the paper: the LR ratio vs width and alpha

After the grids, the LR grids are refined (`lora-lab sweep --help` and lora_lab/refine.py state the
rule): each arm of more than one LR gets LRs around its optimum until it is bracketed and narrow
(narrow: by the experiment file's refine factor; most tiny experiments only open edge optima),
for at most --refine-rounds rounds (--quick: one), the rounds of all experiments through one pool
per round. Experiments whose arms have one LR each (fixed-LR designs such as tiny/invariance) are
not refined. On SLURM a call submits the grids' missing runs or else the next round, and is run
again after those jobs end; with --detach it returns as soon as they are submitted (`lora-lab wait
<run.root>/<scale>` blocks until they end), and the analysis waits for a call with --analyze-only.

Other arguments are Hydra overrides applied to every run (e.g. `run.root=/scratch/runs`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from lora_lab.config import ConfigError, is_experiment_file
from lora_lab.dispatch import launch_jobs
from lora_lab.progress import run_work
from lora_lab.refine import REFINE_ROUNDS, parse_options
from lora_lab.runs import FINAL_STATUSES, run_state
from lora_lab.slurm import Job
from lora_lab.sweep import (add_refine_args, check_detach, detach_kwargs, expand_jobs, experiment_names, refine_grids,
                            split_launcher_args)

SCALES = ("tiny", "paper")
# Experiments beyond the paper's claims (the LR ratio against width and the alpha convention,
# lora_lab/ladder.py), by their basename's prefix: run when named in --only or with --beyond, not by a
# plain reproduce, whose budget is the claims'.
BEYOND_PAPER = ("width", "alpha")


def beyond_paper(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(BEYOND_PAPER)


def plan(scale: str, quick: bool, overrides: list[str], only: list[str] | None = None,
         beyond: bool = False) -> dict[str, list[Job]]:
    """experiment -> its runs, for every experiment of the scale but those beyond the paper (unless
    `beyond`), or those in `only` (which may also name experiment files by their paths, whatever their
    scale)."""
    names = [n for n in experiment_names() if n.startswith(f"{scale}/") and (beyond or only or not beyond_paper(n))]
    if only:
        files = [n for n in only if is_experiment_file(n)]
        unknown = sorted(set(only) - set(names) - set(files))
        if unknown:
            raise ConfigError(f"--only {','.join(unknown)}: not {scale}-scale experiments; choose from {', '.join(names)} "
                              "or give experiment files (my_sweep.yaml)")
        names = [n for n in names if n in only] + files
    return {name: expand_jobs(name, overrides, quick)[1] for name in names}


def reproduce(scale: str = "tiny", quick: bool = False, overrides: list[str] | None = None, launcher: str = "local",
              cluster: str | None = None, max_parallel: int | None = None, only: list[str] | None = None,
              out: Path | None = None, analyze_only: bool = False, workers: bool = True, refine: bool = True,
              refine_factor: float | None = None, refine_rounds: int = REFINE_ROUNDS, detach: bool = False,
              beyond: bool = False) -> int:
    """Every experiment's grid, then (`refine`) the refinement rounds of the arms with more than one LR
    (at most refine_rounds; --quick: at most one), then the analysis. Returns an exit code. `detach`
    (SLURM): submit the grids' missing runs, or else the next refinement round, and return at once,
    without the analysis (`lora-lab wait`, then `--analyze-only`)."""
    check_detach(detach, launcher)
    overrides = list(overrides or [])
    if not any(o.startswith("run.root=") for o in overrides):
        # Quick runs differ from the full ones; keep them apart so analyses never mix the two.
        overrides.insert(0, f"run.root={'runs-quick' if quick else 'runs'}")
    t0 = time.monotonic()
    experiments = plan(scale, quick, overrides, only, beyond)
    jobs = [j for js in experiments.values() for j in js]
    if not jobs:
        raise ConfigError(f"--scale {scale}: no experiments under experiments/{scale}/")
    root = Path(jobs[0].cfg.run.root)
    print(f"reproduce --scale {scale}{' --quick' if quick else ''}: {len(experiments)} experiments, {len(jobs)} runs "
          f"in {root}/{scale}", flush=True)
    for name, js in experiments.items():
        print(f"  {name:<36} {len(js):>4} runs", flush=True)
    code = 0
    if not analyze_only:
        # Longest runs first: fewer idle workers at the end.
        jobs.sort(key=lambda j: run_work(j.cfg), reverse=True)
        unfinished = sum(run_state(j.path)["state"] not in FINAL_STATUSES for j in jobs)
        code = launch_jobs(f"reproduce {scale}", jobs, root / scale, launcher, cluster, max_parallel,
                           overrides=overrides, workers=workers, **detach_kwargs(detach))
        if refine and launcher == "slurm" and unfinished:
            print(f"reproduce {scale}: the grids' {unfinished} unfinished runs are submitted (or running); run this "
                  "command again after those jobs end to submit refinement round 1", flush=True)
        elif refine:
            code = max(code, refine_grids(f"reproduce {scale}", experiments, root / scale, launcher, cluster,
                                          max_parallel, overrides=overrides, workers=workers, factor=refine_factor,
                                          rounds=min(refine_rounds, 1) if quick else refine_rounds, min_lrs=2,
                                          **detach_kwargs(detach)))
        print(f"runs: {time.monotonic() - t0:.0f} s", flush=True)
        if detach:
            where = os.path.commonpath([str(root / js[0].cfg.run.experiment) for js in experiments.values() if js])
            print(f"reproduce {scale}: detached: the jobs run without this process. Progress: lora-lab status {where}; "
                  f"block until they end: lora-lab wait {where}; then this command again (the next refinement "
                  "round, or with --analyze-only the analysis)", flush=True)
            return code
    if not analyze_only and launcher == "local":
        time_rank_steps(experiments, overrides, quick)
    from lora_lab.report import analyze, verdict_table

    out = out or root / scale / "analysis"
    # An experiment's runs are in <run.root>/<run.experiment>/ (an experiment file's own name for them).
    dirs = dict.fromkeys(root / js[0].cfg.run.experiment for js in experiments.values() if js)
    paths = [p for p in dirs if p.is_dir()]
    if not paths:
        print("no run directories to analyze", file=sys.stderr)
        return code or 1
    result = analyze(paths, out, progress=True)
    print(f"analysis: {len(result['files'])} files in {out}; reproduce: done in {time.monotonic() - t0:.0f} s")
    # The scorecard, then where to read it in full: the last lines of `make run`.
    print("\nclaims scorecard:")
    print(verdict_table(result.get("verdicts", {})))
    print(f"\nreport: {out / 'report.html'} (and {out / 'report.md'})", flush=True)
    return code


def time_rank_steps(experiments: dict[str, list[Job]], overrides: list[str], quick: bool) -> None:
    """C6's measured step times: the arms of each rank experiment of a tiny model timed interleaved in
    one process (lora_lab/steptime.py), unless its step_times.json is there already."""
    from lora_lab.curves import kind_of
    from lora_lab.steptime import FILE, time_steps

    for name, js in experiments.items():
        if not js or kind_of(name) != "rank" or not str(js[0].cfg.model.name).startswith("tiny"):
            continue
        if not (Path(js[0].cfg.run.root) / js[0].cfg.run.experiment / FILE).exists():
            time_steps(name, overrides, quick=quick, **({"steps": 2, "rounds": 2} if quick else {}))


def reproduce_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lora-lab reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=SCALES, default="tiny")
    p.add_argument("--quick", action="store_true", help="each experiment's quick grid (hydra.sweeper.quick)")
    p.add_argument("--only", help="comma-separated experiments, e.g. tiny/rank,tiny/batch, or experiment files (my_sweep.yaml)")
    p.add_argument("--beyond", action="store_true", help="also the experiments beyond the paper's claims "
                   f"({', '.join(f'<scale>/{b}*' for b in BEYOND_PAPER)}: the LR ratio against width and alpha)")
    p.add_argument("--out", type=Path, help="analysis output directory (default <run.root>/<scale>/analysis)")
    p.add_argument("--analyze-only", action="store_true", help="skip the runs; analyze what is there")
    p.add_argument("--detach", action="store_true", help="launcher=slurm: submit the jobs and return at once, "
                   "without the analysis (follow with `lora-lab status`, `lora-lab wait`)")
    p.add_argument("--no-refine", dest="refine", action="store_false",
                   help="run the grids only: no LRs added around the arms' optima")
    add_refine_args(p, "")
    p.add_argument("overrides", nargs="*", help="launcher=local|slurm, cluster=<profile>, max_parallel=N, "
                   "workers=false (local: a process per run), Hydra overrides")
    args = p.parse_intermixed_args(argv)
    factor, rounds = parse_options(args.refine_factor, args.refine_rounds)
    launcher, cluster, max_parallel, overrides, workers = split_launcher_args(args.overrides)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    return reproduce(args.scale, args.quick, overrides, launcher, cluster, max_parallel, only, args.out,
                     args.analyze_only, workers, args.refine, factor, rounds, detach=args.detach, beyond=args.beyond)
