"""Shared fixtures: small, fast versions of the tiny default."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

# Small enough for a 2-core CPU: a few seconds per run.
SMALL = ["data.num_examples=64", "data.eval_size=16", "data.max_seq_len=64", "optim.batch_size=8",
         "train.eval_every=0", "train.checkpoint_every=0", "logger.progress=none"]

LORA_LAB = str(Path(sys.executable).with_name("lora-lab"))


@pytest.fixture
def small(tmp_path):
    """compose() with the small settings and a temporary run.root."""
    from lora_lab.config import compose

    def make(*overrides: str):
        return compose([*SMALL, f"run.root={tmp_path / 'runs'}", *overrides])

    return make


def train_steps(run: Path) -> list[int]:
    """The steps of a run directory's training lines, in the order logged (a line being written is
    not read)."""
    from lora_lab.runs import read_metrics

    return [r["step"] for r in read_metrics(Path(run) / "metrics.jsonl") if "train_loss" in r]


# -- run directories written by hand for the analysis tests
# Runs in the format of the run-directory contract whose losses come from written-down curves, so
# that the analysis has known answers (test_analysis, test_report, test_results, test_notebook).

import json  # noqa: E402
import math  # noqa: E402
import random  # noqa: E402

from lora_lab.config import Config, DataConfig, LoraConfig, OptimConfig, RunConfig, TrainConfig, to_yaml  # noqa: E402
from lora_lab.runs import run_dir  # noqa: E402

STEPS = 50
FULL_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
LORA_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
# The true optima of the hand-made U-curves: FullFT 4e-4, LoRA ranks >= 4 at 10x that, rank 1 at 2e-3.
TRUE_OPT = {None: 4e-4, 1: 2e-3, 4: 4e-3, 16: 4e-3, 64: 4e-3}


def make_config(root: Path, experiment: str, method: str = "lora", rank: int = 4, lr: float = 1e-3, steps: int = STEPS,
                batch_size: int = 32, adam_eps: float = 1e-8, data: DataConfig | None = None, task: str = "sft",
                seed: int = 0, **lora_kw) -> Config:
    lora = LoraConfig(rank=rank, **lora_kw) if method == "lora" else LoraConfig()
    return Config(method=method, task=task, lora=lora, data=data or DataConfig(),
                  optim=OptimConfig(lr=lr, batch_size=batch_size, adam_eps=adam_eps),
                  train=TrainConfig(max_steps=steps, seed=seed), run=RunConfig(root=str(root), experiment=experiment))


def jitter(scale: float, *key: object) -> float:
    """A fixed pseudo-random number in [-scale, scale] for a key (e.g. curve, seed, step): seed-to-seed
    noise for hand-made runs that is the same on every test run."""
    return random.Random(repr(key)).uniform(-scale, scale)


def write_run(cfg: Config, losses: list[float], status: str | None = "completed", summary: dict | None = None,
              extra_lines: list[dict] | None = None, trainable: int = 1000) -> Path:
    """A run directory in the contract's format with the given per-step train losses
    (status None: no summary.json, an unfinished run)."""
    d = run_dir(cfg)
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(to_yaml(cfg))
    bs = cfg.optim.batch_size
    lines = [{"step": i, "train_loss": loss, "lr": cfg.optim.lr, "examples": i * bs, "tokens": i * bs * 40,
              "wall_s": 0.1 * i, "grad_norm": 1.0} for i, loss in enumerate(losses, start=1)]
    with open(d / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines + (extra_lines or []))
    if status is not None:
        s = {"status": status, "steps": len(losses), "final_train_loss": losses[-1] if losses else None,
             "final_eval_loss": losses[-1] if losses else None, "trainable_params": trainable,
             "wall_s": 0.1 * len(losses), "step_time_s": 0.1, **(summary or {})}
        (d / "summary.json").write_text(json.dumps(s))
    return d


def antithetic(scale: float, seed: int, *key: object) -> float:
    """jitter for seed pairs (0, 1), (2, 3), ...: the even seed gets +j, the odd one -j, so the mean of
    a pair is exactly the noise-free value while the seeds still differ (a known seed-mean answer with
    a nonzero seed-to-seed spread)."""
    return (1 if seed % 2 == 0 else -1) * jitter(scale, seed // 2, *key)


def u_curve_losses(lr: float, rank: int | None, steps: int = STEPS, seed: int = 0, noise: float = 0.0) -> list[float]:
    """A known trajectory: a shared decay, plus a penalty quadratic in log10(LR / optimum) that grows in
    over training, plus (rank 1) a capacity term from step 31 on; `noise`: per-step antithetic seed
    noise of that amplitude."""
    x = math.log10(lr / TRUE_OPT[rank])
    out = []
    for t in range(1, steps + 1):
        loss = 1.0 + 7.0 * math.exp(-t / 8) + 0.5 * x * x * (1 - math.exp(-t / 8))
        if rank == 1:
            loss += 0.3 * max(0, t - 30) / 20
        if noise:
            loss += antithetic(noise, seed, rank, lr, t)
        out.append(loss)
    return out


def make_rank_results(root: Path, experiment: str = "tiny/rank", seeds: tuple[int, ...] = (0,), noise: float = 0.0) -> Path:
    """A results directory of a rank sweep with known optimal LRs (for every seed, with `noise`:
    antithetic per-step seed noise, so the seed means are the noise-free curves), plus one diverged,
    one failed and one unfinished run."""
    for seed in seeds:
        for lr in FULL_GRID:
            write_run(make_config(root, experiment, "full", lr=lr, seed=seed), u_curve_losses(lr, None, seed=seed, noise=noise),
                      trainable=100_000)
        for rank in (1, 4, 16, 64):
            for lr in LORA_GRID:
                write_run(make_config(root, experiment, rank=rank, lr=lr, seed=seed),
                          u_curve_losses(lr, rank, seed=seed, noise=noise), trainable=1000 * rank)
    write_run(make_config(root, experiment, rank=16, lr=1e-1), [8.0, 9.0, 30.0], "diverged", {"diverged_at_step": 3})
    write_run(make_config(root, experiment, rank=4, lr=1e-1), [8.0], "failed", {"error": "RuntimeError: out of memory"})
    write_run(make_config(root, experiment, rank=64, lr=1e-1), [8.0, 7.5])
    (run_dir(make_config(root, experiment, rank=64, lr=1e-1)) / "summary.json").unlink()
    return root


def decay(t: int) -> float:
    return math.exp(-t / 8)


def make_invariance(root: Path, broken: float = 0.0) -> None:
    """Runs of (alpha, init_A, LR_A, LR_B) variants: three of one invariance class, one of another;
    `broken` drifts one "equivalent" variant by that many nats by the end."""
    base = [1 + 7 * decay(t) for t in range(1, STEPS + 1)]
    # (alpha, init_a_scale, lr_a_mult, lr_b_mult): the first three are one class (p=2,q=1 and p=1,q=4 of the
    # map (alpha/(pq), p*init_A, p*LR_A, q*LR_B)), the last is another (alpha alone changed)
    for (alpha, s, a, b), shift in (((32, 1, 1, 1), 0.0), ((16, 2, 2, 1), 1e-5), ((8, 1, 1, 4), broken),
                                    ((64, 1, 1, 1), 0.05)):
        cfg = make_config(root, "tiny/invariance", rank=4, lr=3e-3, adam_eps=0.0, alpha=alpha, init_a_scale=s,
                          lr_a_mult=a, lr_b_mult=b)
        write_run(cfg, [v + shift * (t / STEPS) for t, v in enumerate(base, start=1)])


@pytest.fixture
def rank_results(tmp_path) -> Path:
    """The runs root of make_rank_results under a temporary directory."""
    return make_rank_results(tmp_path / "runs")
