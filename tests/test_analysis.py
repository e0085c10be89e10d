"""Analysis: optimal-LR fits, pointwise-min curves, departures, and `lora-lab analyze` on hand-made
results directories whose answers are known (the losses come from written-down U-curves)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lora_lab.analysis import FULL, analyze, departures, fit_optimum, kind_of, label_runs, lr_ratios, optimal_lrs, pointwise_min
from lora_lab.config import Config, DataConfig, LoraConfig, OptimConfig, RunConfig, TrainConfig, run_dir, to_yaml
from lora_lab.results import load_results

STEPS = 50
FULL_GRID = (1e-4, 3e-4, 1e-3, 3e-3)
LORA_GRID = (1e-3, 3e-3, 1e-2, 3e-2)
# The true optima of the hand-made U-curves: FullFT 4e-4, LoRA ranks >= 4 at 10x that, rank 1 at 2e-3.
TRUE_OPT = {None: 4e-4, 1: 2e-3, 4: 4e-3, 16: 4e-3, 64: 4e-3}


# ----------------------------------------------------------------------------- hand-made runs


def make_config(root: Path, experiment: str, method: str = "lora", rank: int = 4, lr: float = 1e-3, steps: int = STEPS,
                batch_size: int = 32, adam_eps: float = 1e-8, data: DataConfig | None = None, task: str = "sft",
                **lora_kw) -> Config:
    lora = LoraConfig(rank=rank, **lora_kw) if method == "lora" else LoraConfig()
    return Config(method=method, task=task, lora=lora, data=data or DataConfig(),
                  optim=OptimConfig(lr=lr, batch_size=batch_size, adam_eps=adam_eps), train=TrainConfig(max_steps=steps),
                  run=RunConfig(root=str(root), experiment=experiment))


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


def u_curve_losses(lr: float, rank: int | None, steps: int = STEPS) -> list[float]:
    """A known trajectory: a shared decay, plus a penalty quadratic in log10(LR / optimum) that grows in
    over training, plus (rank 1) a capacity term from step 31 on."""
    x = math.log10(lr / TRUE_OPT[rank])
    out = []
    for t in range(1, steps + 1):
        loss = 1.0 + 7.0 * math.exp(-t / 8) + 0.5 * x * x * (1 - math.exp(-t / 8))
        if rank == 1:
            loss += 0.3 * max(0, t - 30) / 20
        out.append(loss)
    return out


def make_rank_results(root: Path, experiment: str = "tiny/rank") -> Path:
    """A results directory of a rank sweep with known optimal LRs, plus one diverged, one failed and
    one unfinished run."""
    for lr in FULL_GRID:
        write_run(make_config(root, experiment, "full", lr=lr), u_curve_losses(lr, None), trainable=100_000)
    for rank in (1, 4, 16, 64):
        for lr in LORA_GRID:
            write_run(make_config(root, experiment, rank=rank, lr=lr), u_curve_losses(lr, rank), trainable=1000 * rank)
    write_run(make_config(root, experiment, rank=16, lr=1e-1), [8.0, 9.0, 30.0], "diverged", {"diverged_at_step": 3})
    write_run(make_config(root, experiment, rank=4, lr=1e-1), [8.0], "failed", {"error": "RuntimeError: out of memory"})
    write_run(make_config(root, experiment, rank=64, lr=1e-1), [8.0, 7.5])
    (run_dir(make_config(root, experiment, rank=64, lr=1e-1)) / "summary.json").unlink()
    return root


# ----------------------------------------------------------------------------- fit_optimum


def test_fit_recovers_vertex_of_quadratic():
    lrs = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    for true in (2e-4, 7e-4, 1.3e-3, 5e-3):
        y = [2 + 0.7 * (math.log10(lr) - math.log10(true)) ** 2 for lr in lrs]
        o = fit_optimum(lrs, y)
        assert o.edge == "" and o.fitted
        assert o.best_lr == pytest.approx(true, rel=1e-9)
        assert o.low == pytest.approx(true) and o.high == pytest.approx(true)  # no noise: a point interval
        assert o.best_value == pytest.approx(min(y))


def test_fit_edges_and_divergence():
    lrs = [1e-4, 1e-3, 1e-2]
    o = fit_optimum(lrs, [1.0, 2.0, 3.0])
    assert (o.edge, o.best_lr, o.high) == ("low", 1e-4, 1e-3) and math.isnan(o.low)
    o = fit_optimum(lrs, [3.0, 2.0, 1.0])
    assert (o.edge, o.best_lr, o.low) == ("high", 1e-2, 1e-3) and math.isnan(o.high)
    # a diverged LR above the best bounds the optimum: not an edge, but nothing to fit
    o = fit_optimum([1e-4, 1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0, math.inf])
    assert (o.edge, o.fitted, o.best_lr, o.low, o.high) == ("", False, 1e-2, 1e-3, 1e-1)
    assert fit_optimum(lrs, [math.inf] * 3).edge == "none"
    assert fit_optimum([1e-3], [1.0]).edge == "single"
    # rewards: the maximum
    o = fit_optimum(lrs, [0.1, 0.5, 0.3], maximize=True)
    assert o.low < o.best_lr < o.high or o.low == o.best_lr == o.high
    assert 1e-4 < o.best_lr < 1e-2 and o.best_value == 0.5


def test_fit_interval_covers_truth_under_noise():
    """The 90% interval from the losses' standard errors covers the true optimum about 90% of the time."""
    rng = np.random.default_rng(1)
    lrs = np.array([1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    true, sem = 8e-4, 0.02
    covered = 0
    trials = 200
    for i in range(trials):
        y = 1 + 0.5 * (np.log10(lrs) - np.log10(true)) ** 2 + rng.normal(0, sem, lrs.size)
        o = fit_optimum(lrs, y, [sem] * lrs.size, seed=i, draws=1000)
        covered += bool(o.low <= true <= o.high)
    assert 0.8 <= covered / trials <= 0.98


# ----------------------------------------------------------------------------- curves


def test_departures_hand_example():
    steps = np.arange(1, 11)
    ref = np.full(10, 1.0)
    late = ref + np.where(steps >= 7, 0.1, 0.0)
    blip = ref + np.where(steps == 3, 0.5, 0.0)  # leaves once early, comes back: not a departure
    curves = pd.concat([pd.DataFrame({"curve": n, "step": steps, "value": v}) for n, v in
                        ((FULL, ref), ("late", late), ("blip", blip), ("never", ref + 0.005))])
    d = departures(curves).set_index("curve")
    assert d.loc["late", "departs_at_step"] == 7
    assert pd.isna(d.loc["blip", "departs_at_step"]) and pd.isna(d.loc["never", "departs_at_step"])
    assert d.loc["late", "max_rel_gap"] == pytest.approx(0.1)


def test_kind_of():
    assert kind_of("tiny/early_rank") == "early_rank"
    assert kind_of("tiny/rank") == "rank" and kind_of("paper/rank_tulu3_llama8b") == "rank"
    assert kind_of("paper/layers_qwen3_30b_a3b") == "layers" and kind_of("paper/rl_math_llama8b") == "rl"
    assert kind_of("tiny/capacity") == "capacity" and kind_of("default") is None


def test_pointwise_min_and_labels(tmp_path):
    root = make_rank_results(tmp_path / "runs")
    res = load_results([root])
    runs = label_runs(res.plotted())
    assert set(runs["curve"]) == {FULL, "LoRA r1", "LoRA r4", "LoRA r16", "LoRA r64"}
    curves = pointwise_min(res, runs, smooth=0.0)
    # at each step, the minimum over the four LRs of the hand-made trajectories
    for rank, name in ((None, FULL), (4, "LoRA r4")):
        grid = FULL_GRID if rank is None else LORA_GRID
        expect = np.min([u_curve_losses(lr, rank) for lr in grid], axis=0)
        got = curves[curves["curve"] == name].sort_values("step")["value"].to_numpy()
        np.testing.assert_allclose(got, expect, rtol=1e-12)
    # the diverged rank-16 run (LR 0.1) does not pull the minimum down after it ends, nor before
    r16 = curves[curves["curve"] == "LoRA r16"].sort_values("step")
    assert (r16["lr"] != 1e-1).all()


# ----------------------------------------------------------------------------- the key test


def test_analyze_recovers_known_optimal_lrs(tmp_path):
    from lora_lab.cli import main

    root = make_rank_results(tmp_path / "runs")
    out = tmp_path / "out"
    assert main(["analyze", str(root), "--out", str(out), "--quiet"]) == 0
    opt = pd.read_csv(out / "optimal_lr.csv")
    assert list(opt.columns[:8]) == ["method", "rank", "layers", "batch_size", "best_lr", "best_lr_low", "best_lr_high",
                                     "best_final_loss"]
    assert "model" in opt.columns and set(opt["model"]) == {"tiny-llama"}
    for _, r in opt.iterrows():
        rank = None if r["method"] == "full" else int(r["rank"])
        assert r["best_lr"] == pytest.approx(TRUE_OPT[rank], rel=1e-6), r["curve"]
        assert r["best_lr_low"] <= r["best_lr"] <= r["best_lr_high"]
    assert len(opt) == 5
    # the diverged run is a point of the rank-16 sweep (at +inf), the failed and unfinished ones are not
    sweep = pd.read_csv(out / "tiny" / "rank" / "lr_sweep.csv")
    r16 = sweep[sweep["curve"] == "LoRA r16"]
    assert len(r16) == 5 and r16["value"].iloc[-1] == math.inf and r16["diverged"].sum() == 1
    assert len(sweep[sweep["curve"] == "LoRA r4"]) == 4 and len(sweep[sweep["curve"] == "LoRA r64"]) == 4
    ratios = pd.read_csv(out / "tiny" / "rank" / "lr_ratios.csv").set_index("rank")
    assert ratios.loc[16, "ratio"] == pytest.approx(10, rel=1e-6) and ratios.loc[1, "ratio"] == pytest.approx(5, rel=1e-6)
    dep = pd.read_csv(out / "tiny" / "rank" / "departures.csv").set_index("curve")
    assert 31 <= dep.loc["LoRA r1", "departs_at_step"] <= 34
    assert dep.loc[["LoRA r4", "LoRA r16", "LoRA r64"], "departs_at_step"].isna().all()
    runs = pd.read_csv(out / "runs.csv").set_index("experiment")
    assert runs.loc["tiny/rank", ["completed", "diverged", "failed", "unfinished"]].tolist() == [20, 1, 1, 1]
    for name in ("rank_curves", "lr_ucurves"):
        assert (out / "tiny" / "rank" / f"{name}.png").stat().st_size > 10_000
        assert (out / "tiny" / "rank" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_optimum_at_grid_edge_is_reported_open(tmp_path):
    root = tmp_path / "runs"
    for lr in LORA_GRID:  # the optimum 0.1 lies above the grid
        write_run(make_config(root, "tiny/rank", rank=4, lr=lr), [1 + (math.log10(lr) + 1) ** 2])
    for lr in FULL_GRID:
        write_run(make_config(root, "tiny/rank", "full", lr=lr), u_curve_losses(lr, None))
    res = load_results([root])
    runs = label_runs(res.plotted())
    opt = optimal_lrs(runs).set_index("curve")
    assert opt.loc["LoRA r4", "edge"] and opt.loc["LoRA r4", "edge_side"] == "high" and opt.loc["LoRA r4", "best_lr"] == 3e-2
    assert not opt.loc[FULL, "edge"]
    assert opt.loc["LoRA r4", "best_lr_low"] == 1e-2 and math.isnan(opt.loc["LoRA r4", "best_lr_high"])
    ratio = lr_ratios(opt.reset_index(), runs).iloc[0]
    assert ratio["open"] and math.isnan(ratio["ratio_high"])


def test_analyze_rejects_empty_or_missing(tmp_path, capsys):
    from lora_lab.cli import main

    assert main(["analyze", str(tmp_path / "nope"), "--quiet"]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["analyze", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_analyze_python_entry_point(tmp_path):
    root = make_rank_results(tmp_path / "runs")
    result = analyze([root], tmp_path / "out", progress=False)
    assert {"C1", "C2", "C9"} <= set(result["verdicts"])
    assert (tmp_path / "out" / "report.md") in result["files"]
    assert result["verdicts"]["C2"][0]["verdict"] == "reproduced"  # 10x at ranks >= 4, within 2x of the paper's 15x (50 steps)
    assert result["verdicts"]["C3"][0]["verdict"] == "not run"
    # `lora-lab fit-lr` reads the optimal_lr.csv written here: one point per curve, none at a grid edge
    theory = pytest.importorskip("lora_lab.plan")
    points = theory.read_optimal_lr([tmp_path / "out"])
    assert sorted(p.lr for p in points) == pytest.approx(sorted(TRUE_OPT.values()))


def test_short_run_ratio_from_the_loss_at_step_100(tmp_path):
    """A constant-LR run's loss at step 100 is a 100-step run's: the short-run optima come from there."""
    root = tmp_path / "runs"
    early = {"full": 3e-4, "lora": 6e-3}  # LR optima of the first 100 steps (ratio 20)
    late = {"full": 4e-4, "lora": 4e-3}  # and of the rest of a 150-step run (ratio 10)

    def losses(method: str, lr: float) -> list[float]:
        out = []
        for t in range(1, 151):
            x = math.log10(lr / (early if t <= 100 else late)[method])
            out.append(1 + 7 * math.exp(-t / 8) + 0.5 * x * x)
        return out

    for lr in FULL_GRID:
        write_run(make_config(root, "tiny/rank", "full", lr=lr, steps=150), losses("full", lr))
    for lr in LORA_GRID:
        write_run(make_config(root, "tiny/rank", rank=4, lr=lr, steps=150), losses("lora", lr))
    analyze([root], tmp_path / "out", progress=False)
    short = pd.read_csv(tmp_path / "out" / "tiny" / "rank" / "lr_ratios_100_steps.csv").iloc[0]
    final = pd.read_csv(tmp_path / "out" / "tiny" / "rank" / "lr_ratios.csv").iloc[0]
    assert short["ratio"] == pytest.approx(20, rel=1e-6) and final["ratio"] == pytest.approx(10, rel=1e-6)
