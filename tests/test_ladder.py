"""Beyond the paper (lora_lab/ladder.py): the optimal LR against width and against rank under each
alpha convention, and the LoRA/FullFT ratio they imply. The hand-made runs' final losses follow
parabolas in log10(LR) whose optima lie between grid points and follow known laws, with antithetic
seed noise (the seed means are the noise-free curves, the seeds still differ), so the fitted optima,
exponents and slopes are known."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import antithetic, make_config, make_invariance, write_run

from lora_lab import config, curves, sections
from lora_lab.ladder import convention_label, log_sigma, loglog_fit
from lora_lab.lrs import read_optimal_lr
from lora_lab.report import analyze

STEPS = 20
WIDTHS = {64: "tiny-llama-w64", 128: "tiny-llama", 256: "tiny-llama-w256"}
P_LORA, P_FULL = 0.5, 0.8


def lora_opt(h: int) -> float:
    return 1e-3 * (2000 / h) ** P_LORA


def full_opt(h: int) -> float:
    return 2e-4 * (2000 / h) ** P_FULL


# (alpha_mode, alpha) -> (LR* at rank 1, slope of log LR* against log rank)
CONVENTIONS = {("fixed", 32.0): (4e-3, -0.1), ("rank", 1.0): (2e-2, -1.0), ("rank", 2.0): (1e-2, -1.0),
               ("sqrt_rank", 8.0): (3e-3, 0.0)}
RANKS = (1, 4, 16, 64)
FULL_ALPHA_OPT = 7e-4
# (convention, rank) whose grid stops below its optimum: a bound, to be left out of the slope
EDGE = (("rank", 1.0), 64)


def losses(lr: float, best: float, seed: int = 0, key: tuple = (), noise: float = 0.02) -> list[float]:
    """A decay onto a final loss quadratic in log10(LR / best), plus a seed offset that cancels over
    the seed pair (0, 1)."""
    final = 1 + 0.4 * math.log10(lr / best) ** 2 + antithetic(noise, seed, *key, lr)
    return [final + 2 * math.exp(-t / 4) for t in range(1, STEPS + 1)]


def grid(best: float, shift: float = 0.0) -> list[float]:
    """Five LRs half a decade apart around `best` (which falls between two of them); `shift`
    decades moves the grid."""
    g0 = math.floor(2 * math.log10(best)) / 2 + shift
    return [10 ** (g0 + k / 2) for k in (-2, -1, 0, 1, 2)]


def on_model(cfg, name: str):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=name))


def make_width(root: Path, experiment: str = "tiny/width", seeds: tuple[int, ...] = (0, 1), edge: bool = False) -> None:
    """Per width, LoRA at rank hidden/8 (alpha 32) and FullFT over their LR grids (seed noise only with
    a seed pair); `edge`: LoRA's grid at hidden 256 ends a decade below its optimum."""
    noise = 0.02 if len(seeds) > 1 else 0.0
    for h, model in WIDTHS.items():
        for seed in seeds:
            for lr in grid(lora_opt(h), -1.5 if edge and h == 256 else 0.0):
                cfg = on_model(make_config(root, experiment, rank=h // 8, lr=lr, seed=seed, steps=STEPS, batch_size=8), model)
                write_run(cfg, losses(lr, lora_opt(h), seed, ("lora", h), noise))
            for lr in grid(full_opt(h)):
                cfg = on_model(make_config(root, experiment, "full", lr=lr, seed=seed, steps=STEPS, batch_size=8), model)
                write_run(cfg, losses(lr, full_opt(h), seed, ("full", h), noise))


def alpha_opt(mode: str, alpha: float, rank: int) -> float:
    at1, slope = CONVENTIONS[(mode, alpha)]
    return at1 * rank**slope


def make_alpha(root: Path) -> None:
    """Ranks 1..64 under the four conventions and FullFT, one seed; the fixed convention's runs are
    written without lora.alpha_mode (as runs made before the key), which counts as fixed."""
    for (mode, alpha) in CONVENTIONS:
        for rank in RANKS:
            best = alpha_opt(mode, alpha, rank)
            for lr in grid(best, -1.5 if ((mode, alpha), rank) == EDGE else 0.0):
                cfg = make_config(root, "tiny/alpha", rank=rank, lr=lr, steps=STEPS, batch_size=8, alpha=alpha, alpha_mode=mode)
                d = write_run(cfg, losses(lr, best, noise=0.0))
                if mode == "fixed":
                    text = (d / "config.yaml").read_text()
                    assert "alpha_mode: fixed\n" in text
                    (d / "config.yaml").write_text(text.replace("  alpha_mode: fixed\n", ""))
    for lr in grid(FULL_ALPHA_OPT):
        write_run(make_config(root, "tiny/alpha", "full", lr=lr, steps=STEPS, batch_size=8), losses(lr, FULL_ALPHA_OPT, noise=0.0))


@pytest.fixture(scope="module")
def analysed(tmp_path_factory) -> tuple[dict, Path]:
    root = tmp_path_factory.mktemp("ladder") / "runs"
    make_width(root)
    make_width(root, "tiny/width_edge", seeds=(0,), edge=True)
    make_alpha(root)
    out = root.parent / "out"
    return analyze([root], out, progress=False), out


def test_the_kinds_are_registered():
    assert {"width", "alpha"} <= set(curves.KINDS) and config.ANALYSES == curves.ANALYSES
    assert curves.kind_of("tiny/width") == "width" and curves.kind_of("paper/alpha_llama1b") == "alpha"
    assert {"width", "alpha"} <= set(sections.SECTIONS)


def test_width_recovers_the_optima_the_exponents_and_the_ratios(analysed):
    _, out = analysed
    opt = pd.read_csv(out / "tiny/width" / "optimal_lr.csv")
    assert len(opt) == 6 and not opt["edge"].any() and (opt["n_seeds"] == 2).all()
    for _, r in opt.iterrows():
        true = lora_opt(r["hidden"]) if r["method"] == "lora" else full_opt(r["hidden"])
        assert r["best_lr"] == pytest.approx(true, rel=1e-6), r["curve"]
        assert r["best_lr_low"] < true < r["best_lr_high"]
        assert r["model"] == WIDTHS[r["hidden"]]
    fit = pd.read_csv(out / "tiny/width" / "width_fit.csv").set_index("method")
    for method, p, m in (("lora", P_LORA, 1e-3), ("full", P_FULL, 2e-4)):
        row = fit.loc[method]
        assert row["p"] == pytest.approx(p, abs=1e-6) and row["p_low"] < p < row["p_high"]
        assert row["p_high"] - row["p_low"] < 0.5  # the optima's intervals are narrow: so is the exponent's
        assert row["M"] == pytest.approx(m, rel=1e-5) and row["M_low"] < m < row["M_high"]
        assert row["n_widths"] == 3 and pd.isna(row["left_out"]) and "weighted" in row["weighting"]
    ratios = pd.read_csv(out / "tiny/width" / "width_ratios.csv").set_index("hidden")
    for h in WIDTHS:
        r = ratios.loc[h]
        assert r["ratio"] == pytest.approx(lora_opt(h) / full_opt(h), rel=1e-6)
        assert r["ratio_low"] < r["ratio"] < r["ratio_high"] and not r["open"]
        assert r["hidden_over_2alpha"] == pytest.approx(h / 64) and r["rank"] == h // 8
    rf = pd.read_csv(out / "tiny/width" / "width_ratio_fit.csv").iloc[0]
    slope = P_FULL - P_LORA  # ratio = 5 (2000 / h)^(0.5 - 0.8)
    assert rf["slope"] == pytest.approx(slope, abs=1e-6) and rf["slope_low"] < slope < rf["slope_high"]
    at = 5 * (2000 / 4096) ** (P_LORA - P_FULL)
    assert rf["ratio_at_target"] == pytest.approx(at, rel=1e-5) and rf["ratio_at_target_low"] < at < rf["ratio_at_target_high"]
    assert rf["target_hidden"] == 4096 and rf["extrapolated"]


def test_width_leaves_an_edge_optimum_out_of_the_fits_and_says_so(analysed):
    _, out = analysed
    d = out / "tiny/width_edge"
    opt = pd.read_csv(d / "optimal_lr.csv").set_index(["method", "hidden"])
    assert opt.loc[("lora", 256), "edge"] and opt.loc[("lora", 256), "edge_side"] == "high"
    assert opt.loc[("lora", 256), "best_lr"] < lora_opt(256)  # a bound: the grid's highest LR
    fit = pd.read_csv(d / "width_fit.csv").set_index("method")
    assert fit.loc["lora", "n_widths"] == 2 and "h=256" in fit.loc["lora", "left_out"]
    assert fit.loc["lora", "p"] == pytest.approx(P_LORA, abs=1e-6)  # two widths on the law: the law, not the bound
    assert fit.loc["full", "n_widths"] == 3
    ratios = pd.read_csv(d / "width_ratios.csv").set_index("hidden")
    assert ratios.loc[256, "open"] and not ratios.loc[64, "open"]
    rf = pd.read_csv(d / "width_ratio_fit.csv").iloc[0]
    assert rf["n_widths"] == 2 and "h=256" in rf["left_out"]
    assert rf["slope"] == pytest.approx(P_FULL - P_LORA, abs=1e-6)
    report = (out / "report.md").read_text()
    part = report[report.index("### tiny/width_edge"):]
    assert "LoRA h=256 (at the grid's highest LR)" in part and "left out" in part


def test_alpha_recovers_the_slope_of_each_convention(analysed):
    _, out = analysed
    d = out / "tiny/alpha"
    opt = pd.read_csv(d / "optimal_lr.csv")
    lora = opt[opt["method"] == "lora"]
    assert len(lora) == 16 and set(lora["convention"]) == {"alpha = 32", "alpha = r", "alpha = 2r", "alpha = 8 sqrt(r)"}
    assert set(lora.loc[lora["convention"] == "alpha = 32", "alpha_mode"]) == {"fixed"}  # no column: fixed
    for _, r in lora.iterrows():
        true = alpha_opt(r["alpha_mode"], r["alpha"], int(r["rank"]))
        if ((r["alpha_mode"], r["alpha"]), r["rank"]) == EDGE:
            assert r["edge"] and r["best_lr"] < true
        else:
            assert not r["edge"] and r["best_lr"] == pytest.approx(true, rel=1e-6), r["curve"]
    full = opt[opt["method"] == "full"]
    assert len(full) == 1 and full["best_lr"].iloc[0] == pytest.approx(FULL_ALPHA_OPT, rel=1e-6)
    assert full["curve"].iloc[0] == "FullFT"  # no convention: FullFT has no adapter
    slopes = pd.read_csv(d / "alpha_slopes.csv").set_index(["alpha_mode", "alpha"])
    for key, (_, slope) in CONVENTIONS.items():
        s = slopes.loc[key]
        assert s["slope"] == pytest.approx(slope, abs=1e-6), key
        assert s["slope_low"] <= slope + 1e-9 and slope - 1e-9 <= s["slope_high"]
        assert s["n_ranks"] == (3 if key == EDGE[0] else 4)
    assert slopes.loc[EDGE[0], "left_out"] == "r64 (at the grid's highest LR)"
    assert slopes.loc[("fixed", 32.0), "scale"] == "32/r" and slopes.loc[("sqrt_rank", 8.0), "scale"] == "8/sqrt(r)"
    ratios = pd.read_csv(d / "alpha_ratios.csv")
    assert len(ratios) == 16
    for _, r in ratios.iterrows():
        if ((r["alpha_mode"], r["alpha"]), r["rank"]) == EDGE:
            assert r["open"]
            continue
        assert r["ratio"] == pytest.approx(alpha_opt(r["alpha_mode"], r["alpha"], int(r["rank"])) / FULL_ALPHA_OPT, rel=1e-6)
    rs = ratios[ratios["convention"] == "alpha = 8 sqrt(r)"]
    assert rs["scale"].tolist() == pytest.approx([8 / math.sqrt(k) for k in RANKS])
    # fit-lr's LR law is for alpha = 32: the other conventions' rows are not read into it
    points = read_optimal_lr([d / "optimal_lr.csv"], keep_edge=True)
    assert sorted(p.method for p in points) == ["full"] + ["lora"] * len(RANKS)


def test_the_report_has_the_section_and_the_figures(analysed):
    result, out = analysed
    for exp, names in (("tiny/width", ("lr_vs_width", "ratio_vs_width")), ("tiny/alpha", ("lr_vs_rank_by_alpha",))):
        for name in names:
            assert (out / exp / f"{name}.png").stat().st_size > 10_000 and (out / exp / f"{name}.pdf").is_file()
    report = (out / "report.md").read_text()
    head = "## Beyond the paper: how the LoRA/FullFT LR ratio moves with width and alpha"
    assert report.count(head) == 1 and report.index("## C9") < report.index(head)
    part = report[report.index(head):]
    for link in ("![lr_vs_width](tiny/width/lr_vs_width.png)", "![ratio_vs_width](tiny/width/ratio_vs_width.png)",
                 "![lr_vs_rank_by_alpha](tiny/alpha/lr_vs_rank_by_alpha.png)"):
        assert link in part
    assert "LoRA p = 0.50 [" in part and "FullFT p = 0.80 [" in part
    assert "h=64: 1.8 [" in part and "alpha = 8 sqrt(r) (scale 8/sqrt(r)): 0.00 [" in part
    assert "at hidden 4096 (Llama-3.1-8B's width) the fitted line gives a ratio of 6.2 [" in part
    assert "This is an extrapolation from widths 64..256" in part and "its own base model" in part
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == report.count("](")  # every figure embedded
    assert "## Other experiments" not in report
    # nothing judged on them; the optima go into optimal_lr.csv, which lora-lab fit-lr reads
    assert all(v["experiment"] in (None,) for vs in result["verdicts"].values() for v in vs)
    opt = pd.read_csv(out / "optimal_lr.csv")
    assert {"tiny/width", "tiny/alpha"} <= set(opt["experiment"])
    points = read_optimal_lr([out / "optimal_lr.csv"])
    width = {(p.method, p.hidden_size): p.lr for p in points if p.model in WIDTHS.values()}
    assert width[("lora", 64)] == pytest.approx(lora_opt(64), rel=1e-6)
    assert {h for _, h in width} == set(WIDTHS)


def test_no_section_without_the_experiments(tmp_path):
    root = tmp_path / "runs"
    make_invariance(root)
    analyze([root], tmp_path / "out", progress=False)
    assert "Beyond the paper" not in (tmp_path / "out" / "report.md").read_text()


def test_a_failing_ladder_section_is_shown_with_its_error(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    for lr in grid(full_opt(128)):
        write_run(make_config(root, "tiny/width", "full", lr=lr, steps=STEPS, batch_size=8), losses(lr, full_opt(128), noise=0.0))

    def broken(res, runs, sec):
        raise KeyError("some_column")

    monkeypatch.setitem(sections.SECTIONS, "width", broken)
    analyze([root], tmp_path / "out", progress=False)
    report = (tmp_path / "out" / "report.md").read_text()
    part = report[report.index("## Beyond the paper"):]
    assert "### tiny/width" in part and "analysis failed: KeyError" in part


def test_fits():
    assert log_sigma(1.0, 10**-1.6448536269514722, 10**1.6448536269514722) == pytest.approx(1.0)
    x = np.array([1.0, 4.0, 16.0, 64.0])
    # points off the line by more than their errors: the interval widens with the scatter (Student's t)
    wobble = np.array([0.05, -0.05, -0.05, 0.05])
    y = 2.0 * x**-0.5 * 10**wobble
    tight = loglog_fit(x, y, np.full(4, 0.001))
    assert tight.slope_low < -0.5 < tight.slope_high and "widened" in tight.weighting
    loose = loglog_fit(x, y, np.full(4, 0.5))
    assert "widened" not in loose.weighting and loose.slope_high - loose.slope_low > tight.slope_high - tight.slope_low
    flat = loglog_fit(x, y, None)
    assert flat.weighting.startswith("unweighted") and flat.slope == pytest.approx(tight.slope)
    assert loglog_fit([1.0], [1.0]) is None and loglog_fit([2.0, 2.0], [1.0, 3.0]) is None
    assert convention_label("rank", 1.0) == "alpha = r" and convention_label("fixed", 32.0) == "alpha = 32"


@pytest.mark.parametrize("script, table", [("width", "width_fit.csv"), ("alpha", "alpha_slopes.csv")])
def test_the_analysis_scripts_write_what_analyze_writes(analysed, tmp_path, script, table):
    import subprocess
    import sys

    _, out = analysed
    repo = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, str(repo / "analysis" / f"{script}.py"), str(out.parent / "runs" / "tiny" / script),
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "tiny" / script / table).read_text() == (out / "tiny" / script / table).read_text()
