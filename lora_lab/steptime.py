"""`lora-lab time-steps`: the training steps of an experiment's arms timed interleaved in one process,
the measured side of C6 (LoRA's cost per step against FullFT's).

A run's own step time (summary.json `step_time_s`) depends on what else the machine ran at the time:
two runs of a sweep that shared two cores with different neighbours are not comparable. Here every
arm that computes a different step (method, rank, layer set, lm_head adapter, batch: the runs'
identity without LR and seed) gets one learner, all of them built once in this process and then
stepped in turn, a block of `--steps` steps each, for `--rounds` rounds with the order rotated each
round, on the same batches of the experiment's data (its batch order, its micro-batches). Each step
is timed alone; the first `--warmup` steps of each learner are not counted. The learners share the
process, its threads and the machine's state from one block to the next, so the ratio of their
medians is a property of the computation on this machine.

    lora-lab time-steps tiny/rank                 # writes runs/tiny/rank/step_times.json
    lora-lab time-steps tiny/rank --steps 8 --rounds 5 --threads 1 run.root=/tmp/runs

Writes `<run.root>/<experiment>/step_times.json` (data only: the analysis reads it as JSON): per arm
the grid run it was taken from (`run_id`, for its curve), method, rank, layer set and lm_head adapter,
the median and quartiles of its step seconds, the steps counted and the median's ratio to FullFT's;
with the machine (torch threads, torch version, platform) and the command. `lora-lab reproduce` runs
it for the tiny scale's rank experiment. Every learner is held in memory at once: meant for models
that fit several times over (the tiny scale); a paper-scale experiment is refused.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from lora_lab.config import Config, ConfigError

STEPS, ROUNDS, WARMUP = 8, 5, 2
THREADS = 1  # a local sweep's runs each have one torch thread on this scale (lora_lab/pool.py)
FILE = "step_times.json"


def arms_to_time(jobs: Sequence) -> list:
    """One job per arm (lora_lab/refine.py arm_key): the arm's run of the lowest seed and LR."""
    from lora_lab.refine import arm_key

    first: dict[str, object] = {}
    for j in sorted(jobs, key=lambda j: (j.cfg.train.seed, j.cfg.optim.lr)):
        first.setdefault(arm_key(j.cfg), j)
    return list(first.values())


def measure(cfgs: Sequence[Config], steps: int = STEPS, rounds: int = ROUNDS, warmup: int = WARMUP) -> list[list[float]]:
    """Seconds of each timed step of each config's learner, interleaved as the module docstring says
    (the warmup steps left out)."""
    import torch

    from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, order_seed
    from lora_lab.distributed import clip_grad_norm
    from lora_lab.learner import build_learner
    from lora_lab.train import batch_nll

    def sft_step(learner, micro_batches: list[dict], grad_clip: float | None) -> None:
        """One optimizer step as train_sft takes it (one process): the batch's mean target NLL."""
        n_target = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
        learner.opt.zero_grad(set_to_none=True)
        for b in micro_batches:
            nll, _ = batch_nll(learner.model, {k: v.to(learner.device) for k, v in b.items()})
            (nll / n_target).backward()
        clip_grad_norm(learner.trainable, grad_clip or math.inf)
        learner.opt.step()

    learners, batches = [], []
    for cfg in cfgs:
        learner = build_learner(cfg)
        train_split, _ = load_data(cfg, learner.tok)
        order = BatchOrder(len(train_split), cfg.optim.batch_size, order_seed(cfg))
        micro, pad_id = cfg.optim.micro_for(1), learner.tok.pad_token_id
        per_step = []
        for s in range(warmup + steps * rounds):
            idx = sorted(order.batch(s % order.steps_per_epoch), key=lambda i: len(train_split.ids[i]))
            per_step.append([collate(train_split, idx[i:i + micro], pad_id) for i in range(0, len(idx), micro)])
        learners.append(learner)
        batches.append(per_step)
    sync = torch.cuda.synchronize if any(lr.device.type == "cuda" for lr in learners) else (lambda: None)
    times: list[list[float]] = [[] for _ in cfgs]
    done = [0] * len(cfgs)

    def run(k: int, n: int, keep: bool) -> None:
        learner = learners[k]
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            sft_step(learner, batches[k][done[k]], cfgs[k].optim.grad_clip)
            sync()
            if keep:
                times[k].append(time.perf_counter() - t0)
            done[k] += 1

    for k in range(len(cfgs)):
        run(k, warmup, keep=False)
    for r in range(rounds):
        for i in range(len(cfgs)):
            run((i + r) % len(cfgs), steps, keep=True)
    return times


def table(jobs: Sequence, times: Sequence[Sequence[float]]) -> list[dict]:
    """A row per timed arm: what it trains, its step-time median and quartiles, its ratio to FullFT's."""
    rows = []
    for j, ts in zip(jobs, times):
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        cfg = j.cfg
        rows.append({"run_id": j.run_id, "method": cfg.method,
                     "rank": cfg.lora.rank if cfg.method == "lora" else None,
                     "layers": cfg.lora.layers if cfg.method == "lora" else None,
                     "unembed": bool(cfg.lora.unembed) if cfg.method == "lora" else None,
                     "batch_size": cfg.optim.batch_size, "step_time_s": statistics.median(ts),
                     "q1_s": q[0], "q3_s": q[2], "steps_timed": len(ts)})
    full = [r["step_time_s"] for r in rows if r["method"] == "full"]
    for r in rows:
        r["ratio_to_full"] = r["step_time_s"] / full[0] if len(full) == 1 else math.nan
    return rows


def time_steps(experiment: str, overrides: Sequence[str] = (), steps: int = STEPS, rounds: int = ROUNDS,
               warmup: int = WARMUP, threads: int = THREADS, quick: bool = False,
               say=lambda m: print(m, flush=True)) -> Path:
    """Time the experiment's arms (measure; quick: the arms of its quick grid) and write
    <run.root>/<experiment>/step_times.json; its path."""
    from lora_lab.sweep import expand_jobs

    _, jobs = expand_jobs(experiment, overrides, quick)
    chosen = arms_to_time(jobs)
    if any(j.cfg.model.name and not j.cfg.model.name.startswith("tiny") for j in chosen):
        raise ConfigError(f"{experiment}: time-steps holds every arm's learner in memory at once; it is meant for the "
                          "tiny models (model.name=tiny-*)")
    say(f"time-steps {experiment}: {len(chosen)} arms, {warmup} warm-up + {rounds} rounds x {steps} steps each, "
        "interleaved in one process")
    import torch

    torch.set_num_threads(threads)
    t0 = time.monotonic()
    times = measure([j.cfg for j in chosen], steps, rounds, warmup)
    rows = table(chosen, times)

    out = Path(chosen[0].cfg.run.root) / chosen[0].cfg.run.experiment / FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"experiment": experiment, "steps": steps, "rounds": rounds, "warmup": warmup,
           "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "platform": platform.platform(), "machine": platform.machine(),
           "command": shlex.join(["lora-lab", "time-steps", experiment, *overrides, "--steps", str(steps),
                                  "--rounds", str(rounds), "--warmup", str(warmup), "--threads", str(threads)]),
           "wall_s": round(time.monotonic() - t0, 2), "arms": rows}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(out)
    for r in rows:
        what = "FullFT" if r["method"] == "full" else f"LoRA r{r['rank']} {r['layers']}{' + lm_head' if r['unembed'] else ''}"
        say(f"  {what:<28} {1000 * r['step_time_s']:8.1f} ms/step  ratio to FullFT {r['ratio_to_full']:.3f}")
    say(f"wrote {out}")
    return out


def read_step_times(experiment_dir: Path) -> dict | None:
    """The step_times.json of an experiment directory (None when there is none or it cannot be read)."""
    path = Path(experiment_dir) / FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("arms"), list) else None


def _positive(name: str, value: str, least: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = least - 1
    if n < least:
        raise ConfigError(f"--{name}={value}: expected an integer >= {least}")
    return n


def time_steps_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lora-lab time-steps", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiment", help="an experiment, e.g. tiny/rank")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every arm (e.g. run.root=...)")
    p.add_argument("--steps", default=str(STEPS), help=f"steps per block (default {STEPS})")
    p.add_argument("--rounds", default=str(ROUNDS), help=f"blocks per arm (default {ROUNDS})")
    p.add_argument("--warmup", default=str(WARMUP), help=f"untimed steps per arm first (default {WARMUP})")
    p.add_argument("--threads", default=str(THREADS), help=f"torch threads (default {THREADS}, as a sweep's runs)")
    args = p.parse_intermixed_args(argv)
    steps, rounds = _positive("steps", args.steps, 1), _positive("rounds", args.rounds, 1)
    warmup, threads = _positive("warmup", args.warmup, 0), _positive("threads", args.threads, 1)
    if steps * rounds < 2:
        raise ConfigError("--steps x --rounds: time at least 2 steps per arm")
    time_steps(args.experiment, args.overrides, steps, rounds, warmup, threads)
    return 0


if __name__ == "__main__":
    sys.exit(time_steps_main(sys.argv[1:]))
