"""Runs per hour of a local sweep with worker processes (the default) against a process per run
(`workers=false`), and the fixed cost of a run in each, in one invocation on the same grid.

1. Throughput: the same shrunk tiny/rank grid (LoRA ranks 1, 4, 16, 64 x LRs 1e-3, 3e-3 at seed 0: 8
   runs of 64 steps, batch 32) through `lora-lab sweep`, the two launchers interleaved (A B A B ...), each
   round into a fresh run root in a temporary directory; runs per hour from the wall time of each
   sweep, medians over the rounds, and their ratio.
2. Fixed cost per run: one LoRA run of 1 step and of 64 steps, in a worker (the time from handing
   it the job to its answer, after a first run that warms the worker) and as `lora-lab train` in a
   process of its own; the fixed cost is the 1-step time less one step's share of the difference,
   t1 - (t64 - t1) / 63, median over the repetitions.

    python experiments/bench_sweep.py                 # 8 runs x 64 steps, 3 rounds; fixed cost x 3 (about 15 min here)
    python experiments/bench_sweep.py --quick         # 2 runs x 4 steps, 1 round: checks that it works

Prints a table for experiments/LOG.md with the command line. It measures time: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA_LAB = str(Path(sys.executable).with_name("lora-lab"))
# What every run of the benchmark shares: tiny/rank's runs (tiny-llama, tiny-tulu, batch 32), quiet.
COMMON = ["train.checkpoint_every=0", "logger.progress=none"]


def sweep_wall(root: Path, grid: list[str], n_runs: int, steps: int, workers: bool, parallel: int) -> float:
    cmd = [LORA_LAB, "sweep", "tiny/rank", "arms=lora", *grid, f"train.max_steps={steps}", *COMMON,
           f"run.root={root}", f"max_parallel={parallel}", f"workers={str(workers).lower()}"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if res.returncode != 0 or f"tiny/rank: {n_runs} completed" not in res.stdout:
        raise SystemExit(f"{shlex.join(cmd)} failed or did not run {n_runs} runs ({res.returncode}):\n"
                         f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}")
    return wall


def process_run_s(root: Path, steps: int, run: list[str]) -> float:
    """Wall time of `lora-lab train` of one run, one torch thread, from the command to its exit."""
    cmd = [LORA_LAB, "train", "+experiments=tiny/rank", *run, f"train.max_steps={steps}", *COMMON, f"run.root={root}"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if res.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return time.monotonic() - t0


def worker_runs_s(root: Path, steps_list: list[int], run: list[str]) -> list[float]:
    """Time of each run in one worker (one torch thread) as the worker measures it: from putting the
    process's state back to the run's outcome. A first 1-step run (not counted) warms the worker up:
    the imports a first run does lazily."""
    from lora_lab.config import compose
    from lora_lab.pool import run_workers
    from lora_lab.slurm import Job

    cfgs = [compose(["+experiments=tiny/rank", *run, f"train.max_steps={s}", *COMMON, f"run.root={root / str(k)}"])
            for k, s in enumerate([1, *steps_list])]
    results: list[dict] = []
    problems = run_workers([Job([], c) for c in cfgs], 1, 1, root / "logs", on_result=results.append)
    if problems:
        raise SystemExit("worker runs failed: " + "; ".join(problems))
    return [r["wall_s"] for r in sorted(results, key=lambda r: r["job"])][1:]


def fixed_cost(t1: float, tn: float, steps: int) -> float:
    return t1 - (tn - t1) / (steps - 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 runs x 4 steps, 1 round, fixed cost once")
    p.add_argument("--rounds", type=int, default=None, help="throughput rounds, each A then B (default 3)")
    p.add_argument("--reps", type=int, default=None, help="fixed-cost repetitions (default 3)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 64: one epoch of tiny/rank)")
    p.add_argument("--parallel", type=int, default=os.cpu_count() or 1, help="max_parallel of the sweeps (default: cores)")
    p.add_argument("--keep", type=Path, default=None, help="keep the runs in this directory instead of a temporary one")
    args = p.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    reps = args.reps or (1 if quick else 3)
    steps = args.steps or (4 if quick else 64)
    grid = ["lora.rank=1", "optim.lr=1e-3,3e-3"] if quick else ["lora.rank=1,4,16,64", "optim.lr=1e-3,3e-3"]
    grid.append("train.seed=0")  # one seed of tiny/rank's three
    n_runs = 2 if quick else 8
    one = ["method=lora", "lora.rank=4", "optim.lr=1e-3"] + (["data.num_examples=256"] if quick else [])
    if quick:
        grid.append("data.num_examples=256")

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_", dir=args.keep))
    try:
        walls: dict[bool, list[float]] = {False: [], True: []}
        for r in range(rounds):
            for workers in (False, True):
                wall = sweep_wall(tmp / f"sweep{r}_{'workers' if workers else 'processes'}", grid, n_runs, steps, workers,
                                  args.parallel)
                walls[workers].append(wall)
                print(f"round {r + 1}: {'workers' if workers else 'a process per run'}: {n_runs} runs in {wall:.1f} s",
                      file=sys.stderr, flush=True)
        proc_cost, worker_cost, proc_t, worker_t = [], [], {1: [], steps: []}, {1: [], steps: []}
        for r in range(reps):
            t1 = process_run_s(tmp / f"proc{r}_1", 1, one)
            tn = process_run_s(tmp / f"proc{r}_n", steps, one)
            w1, wn = worker_runs_s(tmp / f"worker{r}", [1, steps], one)
            proc_t[1].append(t1), proc_t[steps].append(tn), worker_t[1].append(w1), worker_t[steps].append(wn)
            proc_cost.append(fixed_cost(t1, tn, steps))
            worker_cost.append(fixed_cost(w1, wn, steps))
            print(f"fixed cost, repetition {r + 1}: process {proc_cost[-1]:.2f} s, worker {worker_cost[-1]:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    rate = {w: n_runs / med(v) * 3600 for w, v in walls.items()}
    cmd = shlex.join(["python", "experiments/bench_sweep.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"`{cmd}` ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f} at the end): tiny/rank's LoRA arm shrunk to {n_runs} runs of {steps} steps, "
          f"max_parallel={args.parallel} ({max(1, (os.cpu_count() or 1) // args.parallel)} torch thread(s) a run), "
          f"{rounds} round(s) interleaved; fixed cost from 1-step and {steps}-step runs, one thread, "
          f"{reps} repetition(s); medians\n")
    print("| launcher | sweep wall (s) | runs per hour | 1-step run (s) | "
          f"{steps}-step run (s) | fixed cost per run (s) |")
    print("|---|---|---|---|---|---|")
    for workers, name, t, cost in ((False, "a process per run (`workers=false`)", proc_t, proc_cost),
                                   (True, "workers (default)", worker_t, worker_cost)):
        print(f"| {name} | {med(walls[workers]):.1f} | {rate[workers]:.0f} | {med(t[1]):.2f} | {med(t[steps]):.2f} "
              f"| {med(cost):.2f} |")
    print(f"\nworkers / a process per run: {rate[True] / rate[False]:.2f}x the runs per hour (target >= 1.5x); "
          f"fixed cost in a worker {med(worker_cost):.2f} s (target < 1 s), as a process {med(proc_cost):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
