"""`lora-lab analyze` on experiments of no paper kind, analysed by what varies among their runs
(lora_lab/explore.py), and `run.analysis`, which names the analyses of an experiment called anything.
The hand-made runs' final losses follow parabolas in log10(LR) whose optima lie between grid points,
with antithetic seed noise, so the fitted optima are known."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd
import pytest
from conftest import FULL_GRID, LORA_GRID, TRUE_OPT, antithetic, make_config, u_curve_losses, write_run

from lora_lab import cli, config, curves
from lora_lab.config import Config, ConfigError, DataConfig, compose
from lora_lab.curves import EXPLORE, analyses_of
from lora_lab.report import analyze
from lora_lab.runs import identity, run_id

STEPS = 20
SEEDS = (0, 1)
MINE = "mine/lr_sweep_mymodel"
# The optimum of each group's U-curve (None: FullFT), between two points of its LR grid.
OPTIMA = {4: 5e-3, 16: 2e-3, None: 6e-4}


def losses(lr: float, best: float, offset: float = 0.0, seed: int = 0, key: tuple = (), noise: float = 0.02) -> list[float]:
    """A decay onto a final loss quadratic in log10(LR / best), plus a per-run seed offset of up to
    `noise` that cancels over a seed pair (the seed means are the noise-free curves)."""
    final = 1 + 0.4 * math.log10(lr / best) ** 2 + offset + antithetic(noise, seed, *key, lr)
    return [final + 2 * math.exp(-t / 4) for t in range(1, STEPS + 1)]


def with_run(cfg: Config, **run: object) -> Config:
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, **run))


def make_mine(root: Path, experiment: str = MINE) -> None:
    """Two LoRA ranks and FullFT, each over its own LR grid, two seeds."""
    for seed in SEEDS:
        for rank in (4, 16):
            for lr in LORA_GRID:
                write_run(make_config(root, experiment, rank=rank, lr=lr, seed=seed, steps=STEPS),
                          losses(lr, OPTIMA[rank], seed=seed, key=(rank,)))
        for lr in FULL_GRID:
            write_run(make_config(root, experiment, "full", lr=lr, seed=seed, steps=STEPS),
                      losses(lr, OPTIMA[None], seed=seed, key=("full",)))


def make_default(root: Path) -> None:
    """`lora-lab train` runs of one rank over a few LRs at two batch sizes and two weight decays (a key
    no paper kind varies), one seed."""
    for bs in (16, 64):
        for wd in (0.0, 0.1):
            for lr in (1e-3, 3e-3, 1e-2):
                cfg = make_config(root, "default", rank=8, lr=lr, batch_size=bs, steps=STEPS)
                cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, weight_decay=wd))
                write_run(cfg, losses(lr, 4e-3, offset=0.1 * (bs == 64) + wd, noise=0.0))


@pytest.fixture(scope="module")
def explored(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("explore") / "runs"
    make_mine(root)
    make_default(root)
    out = root.parent / "out"
    return analyze([root], out, progress=False), out


def test_optimal_lrs_of_any_experiment_by_what_varies(explored):
    _, out = explored
    opt = pd.read_csv(out / "optimal_lr.csv")
    # the paper kinds' columns first, then the experiment and the varying keys they lack
    assert list(opt.columns[:8]) == ["method", "rank", "layers", "batch_size", "best_lr", "best_lr_low", "best_lr_high",
                                     "best_final_loss"]
    mine = opt[opt["experiment"] == MINE]
    assert len(mine) == 3 and (mine["n_seeds"] == 2).all() and not mine["edge"].any()
    for _, r in mine.iterrows():
        true = OPTIMA[None if r["method"] == "full" else int(r["rank"])]
        assert r["best_lr"] == pytest.approx(true, rel=1e-6), r["curve"]
        assert r["best_lr_low"] < true < r["best_lr_high"]  # the interval spans the seed-to-seed spread
    ratios = pd.read_csv(out / MINE / "lr_ratios.csv").set_index("rank")
    assert ratios.loc[4, "ratio"] == pytest.approx(5e-3 / 6e-4, rel=1e-6)
    assert ratios.loc[16, "ratio"] == pytest.approx(2e-3 / 6e-4, rel=1e-6)
    sweep = pd.read_csv(out / MINE / "lr_sweep.csv")
    assert (sweep["n_seeds"] == 2).all() and (sweep["sem"] > 0).all()
    # default: four groups (batch size x weight decay), each its own U-curve with the optimum at 4e-3
    default = opt[opt["experiment"] == "default"]
    assert len(default) == 4 and default["best_lr"].tolist() == pytest.approx([4e-3] * 4, rel=1e-6)
    assert sorted(zip(default["batch_size"], default["optim.weight_decay"])) == [(16, 0.0), (16, 0.1), (64, 0.0), (64, 0.1)]
    best = default.set_index(["batch_size", "optim.weight_decay"])["best_final_loss"]
    assert best[(64, 0.1)] - best[(16, 0.0)] == pytest.approx(0.2, abs=1e-9)


def test_figures_and_report_of_experiments_of_no_kind(explored):
    result, out = explored
    for name in ("lr_ucurves", "min_loss_curves", "final_vs_rank"):
        assert (out / MINE / f"{name}.png").stat().st_size > 10_000
    for name in ("curves_by_batch_size", "curves_by_weight_decay", "final_vs_batch_size", "final_vs_weight_decay"):
        assert (out / "default" / f"{name}.png").stat().st_size > 10_000
    assert not (out / MINE / "curves_by_rank.png").exists()  # nothing varies beside rank and method
    varies = pd.read_csv(out / MINE / "varies.csv").set_index("key")
    assert varies.loc["lora.rank", "values"] == "4, 16" and varies.loc["train.seed", "n_values"] == 2
    final = pd.read_csv(out / "default" / "final_vs_batch_size.csv")
    assert set(final["curve"]) == {"LoRA weight_decay=0", "LoRA weight_decay=0.1"}
    report = (out / "report.md").read_text()
    assert "unknown kind" not in report and "no analysis for this experiment" not in report
    assert "## Other experiments" not in report
    for exp in (MINE, "default"):
        assert f"### {exp}\n" in report and f"![lr_ucurves]({exp}/lr_ucurves.png)" in report
    assert "What varies: `method` (full, lora); `lora.rank` (4, 16)" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == report.count("](") == 9  # every figure embedded
    # no claim judged on them
    assert all(v["experiment"] is None for vs in result["verdicts"].values() for v in vs)


def test_rl_runs_by_what_varies(tmp_path):
    """RL runs of an experiment of no kind: the RL kind's reward vs LR and its optimum, beside the
    SFT runs of the same experiment (under rl/)."""
    root, exp = tmp_path / "runs", "mine/policy"
    for method, rank, best in (("lora", 1, 2e-3), ("full", None, 5e-4)):
        for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2):
            reward = 0.6 - 0.1 * math.log10(lr / best) ** 2
            lines = [{"step": t, "reward": reward, "completion_len": 20} for t in range(1, 11)]
            cfg = make_config(root, exp, method, rank=rank or 4, lr=lr, data=DataConfig(name="tiny-math"), task="rl", steps=10)
            write_run(cfg, [], summary={"final_reward": reward}, extra_lines=lines)
    for lr in (1e-3, 3e-3, 1e-2):
        write_run(make_config(root, exp, rank=4, lr=lr, steps=STEPS), losses(lr, 4e-3, noise=0.0))
    out = tmp_path / "out"
    analyze([root], out, progress=False)
    rl = pd.read_csv(out / exp / "rl" / "optimal_lr_rl.csv").set_index("method")
    assert rl.loc["lora", "best_lr"] == pytest.approx(2e-3, rel=1e-6)
    assert rl.loc["full", "best_lr"] == pytest.approx(5e-4, rel=1e-6)
    assert (out / exp / "rl" / "rl_lr.png").is_file() and (out / exp / "lr_ucurves.png").is_file()
    opt = pd.read_csv(out / "optimal_lr.csv")  # the SFT optimum only: RL's stay in optimal_lr_rl
    assert len(opt) == 1 and opt["best_lr"].iloc[0] == pytest.approx(4e-3, rel=1e-6)
    report = (out / "report.md").read_text()
    assert f"![rl_lr]({exp}/rl/rl_lr.png)" in report and "`optimal_lr_rl.csv`:" in report


def test_run_analysis_names_the_kind(tmp_path):
    """run.analysis=[rank]: an experiment named anything is analysed, and judged, as tiny/rank is."""
    root, exp = tmp_path / "runs", "mine/anything"
    for lr in FULL_GRID:
        write_run(with_run(make_config(root, exp, "full", lr=lr), analysis=["rank"]), u_curve_losses(lr, None))
    for rank in (1, 4, 16):
        for lr in LORA_GRID:
            write_run(with_run(make_config(root, exp, rank=rank, lr=lr), analysis=["rank"]), u_curve_losses(lr, rank))
    result = analyze([root], tmp_path / "out", progress=False)
    for claim in ("C1", "C2", "C6"):
        (v,) = result["verdicts"][claim]
        assert v["experiment"] == exp and v["verdict"] != "not run"
    assert (tmp_path / "out" / exp / "rank_curves.png").is_file()
    opt = pd.read_csv(tmp_path / "out" / "optimal_lr.csv")
    assert len(opt) == 4
    for _, r in opt.iterrows():
        assert r["best_lr"] == pytest.approx(TRUE_OPT[None if r["method"] == "full" else int(r["rank"])], rel=1e-6)


def test_several_analyses_of_one_experiment(tmp_path):
    """run.analysis=[rank, explore]: a section each, under <experiment>/<kind>/; their optima once in
    optimal_lr.csv."""
    root, exp = tmp_path / "runs", "mine/both"
    for method, rank, grid in (("full", None, FULL_GRID), ("lora", 4, LORA_GRID)):
        for lr in grid:
            write_run(with_run(make_config(root, exp, method, rank=rank or 4, lr=lr), analysis=["rank", EXPLORE]),
                      u_curve_losses(lr, rank))
    out = tmp_path / "out"
    result = analyze([root], out, progress=False)
    assert (out / exp / "rank" / "rank_curves.png").is_file() and (out / exp / EXPLORE / "lr_ucurves.png").is_file()
    assert result["verdicts"]["C2"][0]["experiment"] == exp
    assert len(pd.read_csv(out / "optimal_lr.csv")) == 2
    assert f"![rank_curves]({exp}/rank/rank_curves.png)" in (out / "report.md").read_text()


def test_analyses_of():
    assert analyses_of(pd.DataFrame(), "default") == [EXPLORE]
    assert analyses_of(pd.DataFrame(), "tiny/batch") == ["batch"]  # runs written before run.analysis
    runs = pd.DataFrame({"run.analysis": [(), ("layers", "rank"), None, ("rank",)]})
    assert analyses_of(runs, "tiny/batch") == ["layers", "rank"]
    assert analyses_of(pd.DataFrame({"run.analysis": [()]}), "mine/x") == [EXPLORE]


def test_run_analysis_is_checked_and_leaves_run_ids_alone(tmp_path, capfd):
    assert config.ANALYSES == curves.ANALYSES  # the names config.py checks against are the analyses
    cfg = make_config(tmp_path, "mine/x", rank=4)
    named = with_run(cfg, analysis=["rank", EXPLORE])
    assert identity(named) == identity(cfg) and run_id(named) == run_id(cfg)
    assert compose(["run.analysis=[rank]"]).run.analysis == ["rank"]
    assert compose([]).run.analysis == []
    for bad in ("[bogus]", "[rank,rank]"):
        with pytest.raises(ConfigError, match=r"^run\.analysis=.*: a list of analysis names, each once: .*explore"):
            compose([f"run.analysis={bad}"])
    assert cli.main(["show-config", "run.analysis=[ranks]"]) == 2
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "run.analysis" in err[0] and "early_rank, rank, batch" in err[0]
    with pytest.raises(ConfigError, match=r"run\.analysis='rank': expected a list, e\.g\. run\.analysis=\[rank\]"):
        compose(["run.analysis=rank"])
