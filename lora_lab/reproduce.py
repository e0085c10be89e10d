"""`lora-lab reproduce`: every experiment of a scale through the sweep machinery, then the analysis
and the claims scorecard. A rerun resumes: finished runs are skipped, unfinished ones resume from
their checkpoints. Locally the runs go to worker processes that each run one run after another
(lora_lab/pool.py); the progress line's time left counts the steps the runs in flight have done.

    lora-lab reproduce                      # tiny scale, here (2 cores: ~30 min), runs/ -> runs/tiny/analysis
    lora-lab reproduce --quick              # smaller grids, fewer steps (~5 min), runs-quick/
    lora-lab reproduce --scale paper launcher=slurm cluster=<profile>   # the paper's grids on a cluster
    lora-lab reproduce --only tiny/rank,tiny/batch    # some experiments only
    lora-lab reproduce --no-refine          # the grids only

After the grids, the LR grids are refined (`lora-lab sweep --help` and lora_lab/refine.py state the
rule): each arm of more than one LR gets LRs around its optimum until it is bracketed and narrow
(narrow: by the experiment file's refine factor; most tiny experiments only open edge optima),
for at most --refine-rounds rounds (--quick: one), the rounds of all experiments through one pool
per round. Experiments whose arms have one LR each (fixed-LR designs such as tiny/invariance) are
not refined. On SLURM a call submits the grids' missing runs or else the next round, and is run
again after those jobs end.

Other arguments are Hydra overrides applied to every run (e.g. `run.root=/scratch/runs`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lora_lab.config import ConfigError
from lora_lab.refine import REFINE_ROUNDS, parse_options
from lora_lab.runs import FINAL_STATUSES, run_state
from lora_lab.slurm import Job
from lora_lab.sweep import (add_refine_args, expand_jobs, experiment_names, launch_jobs, refine_grids, run_work,
                            split_launcher_args)

SCALES = ("tiny", "paper")


def plan(scale: str, quick: bool, overrides: list[str], only: list[str] | None = None) -> dict[str, list[Job]]:
    """experiment -> its runs, for every experiment of the scale (or those in `only`)."""
    names = [n for n in experiment_names() if n.startswith(f"{scale}/")]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ConfigError(f"--only {','.join(unknown)}: not {scale}-scale experiments; choose from {', '.join(names)}")
        names = [n for n in names if n in only]
    return {name: expand_jobs(name, overrides, quick)[1] for name in names}


def reproduce(scale: str = "tiny", quick: bool = False, overrides: list[str] | None = None, launcher: str = "local",
              cluster: str | None = None, max_parallel: int | None = None, only: list[str] | None = None,
              out: Path | None = None, analyze_only: bool = False, workers: bool = True, refine: bool = True,
              refine_factor: float | None = None, refine_rounds: int = REFINE_ROUNDS) -> int:
    """Every experiment's grid, then (`refine`) the refinement rounds of the arms with more than one LR
    (at most refine_rounds; --quick: at most one), then the analysis. Returns an exit code."""
    overrides = list(overrides or [])
    if not any(o.startswith("run.root=") for o in overrides):
        # Quick runs differ from the full ones; keep them apart so analyses never mix the two.
        overrides.insert(0, f"run.root={'runs-quick' if quick else 'runs'}")
    t0 = time.monotonic()
    experiments = plan(scale, quick, overrides, only)
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
                           overrides=overrides, workers=workers)
        if refine and launcher == "slurm" and unfinished:
            print(f"reproduce {scale}: the grids' {unfinished} unfinished runs are submitted (or running); run this "
                  "command again after those jobs end to submit refinement round 1", flush=True)
        elif refine:
            code = max(code, refine_grids(f"reproduce {scale}", experiments, root / scale, launcher, cluster,
                                          max_parallel, overrides=overrides, workers=workers, factor=refine_factor,
                                          rounds=min(refine_rounds, 1) if quick else refine_rounds, min_lrs=2))
        print(f"runs: {time.monotonic() - t0:.0f} s", flush=True)
    from lora_lab.report import analyze, verdict_table

    out = out or root / scale / "analysis"
    paths = [root / name for name in experiments if (root / name).is_dir()]
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


def reproduce_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lora-lab reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=SCALES, default="tiny")
    p.add_argument("--quick", action="store_true", help="each experiment's quick grid (hydra.sweeper.quick)")
    p.add_argument("--only", help="comma-separated experiments, e.g. tiny/rank,tiny/batch")
    p.add_argument("--out", type=Path, help="analysis output directory (default <run.root>/<scale>/analysis)")
    p.add_argument("--analyze-only", action="store_true", help="skip the runs; analyze what is there")
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
                     args.analyze_only, workers, args.refine, factor, rounds)
