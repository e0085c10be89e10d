"""Beyond the paper: how the LoRA/FullFT optimal-LR ratio moves with the model's width (the `width`
kind, experiments/tiny/width.yaml) and with the alpha convention (the `alpha` kind,
experiments/tiny/alpha.yaml). Nothing here is judged: the report prints what was measured, with its
intervals, after the claims.

    from lora_lab.sections import analyze_experiment
    sec = analyze_experiment(load_results(["runs/tiny/width"]), "tiny/width", out)
    sec.tables["width_fit"], sec.tables["width_ratios"], sec.tables["width_ratio_fit"]
    sec = analyze_experiment(load_results(["runs/tiny/alpha"]), "tiny/alpha", out)
    sec.tables["alpha_slopes"], sec.tables["alpha_ratios"]

width: the optimal LR per width and method (curves.optimal_lrs on the seed means, with its 90%
interval), a straight line through log10 LR* against log10 hidden per method, written as
LR = M (2000 / hidden)^p, the LoRA/FullFT ratio per width beside hidden / (2 alpha) and the paper's
10x, and the ratio's slope against width, extrapolated to hidden 4096 (Llama-3.1-8B).
alpha: the optimal LR per (convention, rank) and FullFT's; per convention the slope of log10 LR*
against log10 rank (0: the optimum does not move with rank; -1: it goes as 1 / r) and the ratio per
rank. A convention is the pair (lora.alpha_mode, lora.alpha); a run without lora.alpha_mode is `fixed`.

Fits (`loglog_fit`): least squares in log10-log10, each optimum weighted by its 90% interval (the
interval's log-width / (2 x 1.645) as its standard error); the slope's interval from those weights,
widened by the scatter about the line when that is larger (chi2 / dof > 1, Student's t). Where an
optimum's interval has zero width the fit is unweighted (the interval from the scatter alone). An
optimum at an open edge of the LR grid is a bound, not a point: never fitted, and listed as left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lora_lab import figures
from lora_lab.config import ALPHA_MODES, lora_scale
from lora_lab.curves import FULL, label_runs, lr_ratios, optimal_lrs, reference_curves, ucurves
from lora_lab.flops import hidden_size
from lora_lab.lrs import t_quantile
from lora_lab.records import Section
from lora_lab.results import Results

KINDS = ("width", "alpha")
LEVEL = 0.9  # every interval here: the 90% interval of curves.fit_optimum's optima
Z = 1.6448536269514722  # the standard normal's 95% point: a 90% interval is +-Z standard errors
REFERENCE_HIDDEN = 2000  # the paper's LR law: LR = M (2000 / hidden)^p
TARGET_HIDDEN = 4096  # Llama-3.1-8B's hidden size, the paper's main model
TARGET_MODEL = "Llama-3.1-8B"
PAPER_RATIO = 10.0
ALPHA_MODE = "lora.alpha_mode"
CONFOUND = ("each width is its own base model (pretrained separately), so width is confounded with the base model "
            "and its pretraining")


# ----------------------------------------------------------------------------- fits


def log_sigma(value: float, low: float, high: float) -> float:
    """The standard error of log10(value) implied by its 90% interval [low, high] (NaN: open)."""
    if not (np.isfinite(low) and np.isfinite(high) and low > 0 and high > 0):
        return math.nan
    return (math.log10(high) - math.log10(low)) / (2 * Z)


@dataclass(frozen=True)
class LogFit:
    """log10 y = intercept + slope log10 x, with the slope's LEVEL interval and the covariance
    of (intercept, slope) that `at` extrapolates with."""

    slope: float
    slope_low: float
    slope_high: float
    intercept: float
    cov: tuple[tuple[float, float], tuple[float, float]]
    quantile: float  # the multiple of a standard error that spans the interval
    n: int
    weighting: str

    def at(self, x: float) -> tuple[float, float, float]:
        """(y, low, high) of the line at x, in linear units, with its interval (NaN: none)."""
        v = np.array([1.0, math.log10(x)])
        y = self.intercept + self.slope * v[1]
        se = math.sqrt(max(float(v @ np.array(self.cov) @ v), 0.0))
        return 10**y, 10 ** (y - self.quantile * se), 10 ** (y + self.quantile * se)


def loglog_fit(x: Sequence[float], y: Sequence[float], sigma: Sequence[float] | None = None) -> LogFit | None:
    """The line through (log10 x, log10 y), weighted by `sigma` (standard errors of log10 y) where
    every one is finite and positive, else unweighted. The slope's LEVEL interval: with weights, +-Z
    standard errors from the weights alone, or, when the points scatter about the line more than
    their errors allow (chi2 / dof > 1), the errors scaled by sqrt(chi2 / dof) and Student's t with
    n - 2 degrees of freedom; unweighted, the scatter and t (NaN with two points). None with fewer
    than two points or a single x."""
    lx, ly = np.log10(np.asarray(x, dtype=float)), np.log10(np.asarray(y, dtype=float))
    n = len(lx)
    if n < 2 or len(set(lx.round(12))) < 2:
        return None
    s = np.asarray(sigma, dtype=float) if sigma is not None else np.full(n, math.nan)
    weighted = bool(np.all(np.isfinite(s)) and np.all(s > 0))
    w = 1 / s**2 if weighted else np.ones(n)
    X = np.stack([np.ones(n), lx], axis=1)
    cov0 = np.linalg.inv(X.T @ (w[:, None] * X))
    beta = cov0 @ X.T @ (w * ly)
    dof = n - 2
    chi2 = float(w @ (ly - X @ beta) ** 2)
    if weighted:
        scatter = dof > 0 and chi2 / dof > 1
        cov = cov0 * (chi2 / dof if scatter else 1.0)
        q = t_quantile(LEVEL, dof) if scatter else Z
        how = ("weighted by the optima's 90% intervals" + (f", widened by the scatter (chi2/dof {chi2 / dof:.2g})"
                                                           if scatter else ""))
    else:
        cov = cov0 * (chi2 / dof if dof > 0 else math.nan)
        q = t_quantile(LEVEL, dof) if dof > 0 else math.nan
        how = "unweighted (an optimum without an interval of nonzero width), interval from the scatter"
    se = math.sqrt(cov[1, 1]) if np.isfinite(cov[1, 1]) else math.nan
    b = float(beta[1])
    return LogFit(b, b - q * se, b + q * se, float(beta[0]), ((cov[0, 0], cov[0, 1]), (cov[1, 0], cov[1, 1])), q, n, how)


def _log_sigmas(t: pd.DataFrame, value: str = "best_lr", low: str = "best_lr_low", high: str = "best_lr_high") -> list[float]:
    return [log_sigma(v, lo, hi) for v, lo, hi in zip(t[value], t[low], t[high])]


# ----------------------------------------------------------------------------- width


def _sft(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs.get("task", pd.Series("sft", index=runs.index)).fillna("sft") == "sft"]


def _edge_text(r: pd.Series) -> str:
    side = r["edge_side"] or "open"
    return {"low": "at the grid's lowest LR", "high": "at the grid's highest LR", "single": "a one-LR grid",
            "none": "every LR diverged"}.get(side, side)


def width_section(res: Results, runs: pd.DataFrame, sec: Section) -> None:
    """Optimal LR vs hidden size per method, LR = M (2000 / hidden)^p fitted per method, the
    LoRA/FullFT ratio per width against hidden / (2 alpha) and 10x, and its slope extrapolated to
    hidden 4096."""
    runs = _sft(runs).copy()
    if not len(runs):
        sec.notes.append("no SFT runs")
        return
    runs["hidden"] = runs["model.name"].map(lambda m: hidden_size(str(m)))
    unknown = sorted({str(m) for m, h in zip(runs["model.name"], runs["hidden"]) if h is None})
    if unknown:
        sec.notes.append(f"hidden size unknown (left out): {', '.join(unknown)}")
    runs = runs[runs["hidden"].notna()].copy()
    if not len(runs):
        sec.notes.append("no run of a model whose hidden size is known")
        return
    runs["hidden"] = runs["hidden"].astype(int)
    # a curve per method, LoRA setting and width (the rank may follow the width)
    runs["curve"] = label_runs(runs.drop(columns=["model.name"]))["curve"].to_numpy() + " h=" + runs["hidden"].astype(str)
    lora = runs[runs["method"] == "lora"]
    runs["alpha_eff"] = math.nan
    if len(lora):
        runs.loc[lora.index, "alpha_eff"] = [_scale(r) * r["rank"] for _, r in lora.iterrows()]
    sec.table("lr_sweep", ucurves(runs))
    opt = optimal_lrs(runs)
    meta = runs.drop_duplicates("curve").set_index("curve")
    opt.insert(len(opt.columns), "experiment", sec.experiment)
    opt["hidden"] = opt["curve"].map(meta["hidden"]).astype(int)
    opt = opt.sort_values(["hidden", "method"], ascending=[True, False], kind="stable").reset_index(drop=True)
    sec.table("optimal_lr", opt)
    fits, rows = {}, []
    for method in ("lora", "full"):
        m = opt[opt["method"] == method]
        if not len(m):
            continue
        closed = m[~m["edge"].astype(bool) & np.isfinite(m["best_lr"])]
        left = [f"h={r['hidden']} ({_edge_text(r)})" for _, r in m[m["edge"].astype(bool)].iterrows()]
        fit = loglog_fit(closed["hidden"], closed["best_lr"], _log_sigmas(closed))
        fits[method] = fit
        row = {"method": method, "p": math.nan, "p_low": math.nan, "p_high": math.nan, "M": math.nan, "M_low": math.nan,
               "M_high": math.nan, "n_widths": len(closed), "widths": ", ".join(str(h) for h in sorted(closed["hidden"].unique())),
               "left_out": "; ".join(left), "weighting": "", "level": LEVEL}
        if fit is not None:
            M, M_low, M_high = fit.at(REFERENCE_HIDDEN)
            # LR = M (2000 / hidden)^p: p is minus the slope of log LR against log hidden
            row.update(p=-fit.slope, p_low=-fit.slope_high, p_high=-fit.slope_low, M=M, M_low=M_low, M_high=M_high,
                       weighting=fit.weighting)
        else:
            row["weighting"] = "not fitted: fewer than two widths with an optimum inside the grid"
        rows.append(row)
    sec.table("width_fit", pd.DataFrame(rows, columns=["method", "p", "p_low", "p_high", "M", "M_low", "M_high", "n_widths",
                                                       "widths", "left_out", "weighting", "level"]))
    ratios = lr_ratios(opt, runs)
    ratios.insert(0, "hidden", ratios["curve"].map(meta["hidden"]).astype("Int64"))
    alpha = ratios["curve"].map(meta["alpha_eff"]).astype(float)
    ratios["alpha"] = alpha
    ratios["hidden_over_2alpha"] = ratios["hidden"].astype(float) / (2 * alpha)
    ratios["paper"] = PAPER_RATIO
    ratios = sec.table("width_ratios", ratios.sort_values(["hidden", "rank"]).reset_index(drop=True))
    closed = ratios[~ratios["open"].astype(bool) & np.isfinite(ratios["ratio"].astype(float))]
    sigma = dict(zip(opt["curve"], _log_sigmas(opt)))
    refs = reference_curves(runs)
    sig = [math.hypot(sigma[c], sigma[refs[c]]) for c in closed["curve"]]
    rfit = loglog_fit(closed["hidden"].astype(float), closed["ratio"].astype(float), sig)
    fit_row = {"slope": math.nan, "slope_low": math.nan, "slope_high": math.nan, "n_widths": len(closed),
               "left_out": "; ".join(f"h={h} (an optimum at a grid edge)" for h in ratios.loc[ratios["open"].astype(bool), "hidden"]),
               "fitted_from": math.nan, "fitted_to": math.nan, "target_hidden": TARGET_HIDDEN, "ratio_at_target": math.nan,
               "ratio_at_target_low": math.nan, "ratio_at_target_high": math.nan, "extrapolated": True, "weighting": "",
               "level": LEVEL}
    if rfit is not None:
        at, lo, hi = rfit.at(TARGET_HIDDEN)
        h0, h1 = int(closed["hidden"].min()), int(closed["hidden"].max())
        fit_row.update(slope=rfit.slope, slope_low=rfit.slope_low, slope_high=rfit.slope_high, fitted_from=h0, fitted_to=h1,
                       ratio_at_target=at, ratio_at_target_low=lo, ratio_at_target_high=hi,
                       extrapolated=not h0 <= TARGET_HIDDEN <= h1, weighting=rfit.weighting)
    else:
        fit_row["weighting"] = "not fitted: fewer than two widths with both optima inside the grid"
    rf = sec.table("width_ratio_fit", pd.DataFrame([fit_row]))
    sec.figure("lr_vs_width", lr_width_figure(opt, fits, sec.experiment),
               "Optimal LR (fitted on the seed means, 90% interval) vs hidden size, LoRA and FullFT, log-log; lines: "
               "LR = M (2000 / hidden)^p fitted per method; hollow with an arrow: an optimum at a grid edge (a bound, "
               "not fitted).")
    sec.figure("ratio_vs_width", ratio_width_figure(ratios, rfit, rf.iloc[0], sec.experiment),
               "LoRA/FullFT optimal-LR ratio per width (90% interval: LoRA's interval over FullFT's; hollow: an optimum "
               "at a grid edge, not fitted); dashed: hidden / (2 alpha); dotted: the paper's 10x; line: the fitted "
               f"slope, extended to hidden {TARGET_HIDDEN} ({TARGET_MODEL})"
               + (" as an extrapolation." if rf["extrapolated"].iloc[0] else "."))
    _edge_notes(sec, opt, lambda r: f"{'LoRA' if r['method'] == 'lora' else FULL} h={r['hidden']}")
    sec.notes.append(f"width: {CONFOUND}.")


def _edge_notes(sec: Section, opt: pd.DataFrame, name) -> None:
    edge = opt[opt["edge"].astype(bool)]
    if len(edge):
        sec.notes.append("optima at an open edge of the LR grid are bounds, not points, and are never fitted; left out: "
                         + "; ".join(f"{name(r)} ({_edge_text(r)})" for _, r in edge.iterrows())
                         + " (extend the grid past them)")
    else:
        sec.notes.append("every optimum lies inside its LR grid (an optimum at a grid edge would be left out of the fits)")


def lr_width_figure(opt: pd.DataFrame, fits: dict[str, LogFit | None], experiment: str) -> Figure:
    """Optimal LR vs hidden size per method (log-log), with error bars and the fitted lines."""
    fig, axes = figures.new_figure()
    ax = axes[0, 0]
    colors = {"lora": figures.rank_color(16), "full": figures.FULL_COLOR}
    with matplotlib.rc_context(figures.RC):
        for method in ("lora", "full"):
            m = opt[(opt["method"] == method) & np.isfinite(opt["best_lr"])].sort_values("hidden")
            if not len(m):
                continue
            fit = fits.get(method)
            label = "LoRA" if method == "lora" else FULL
            if fit is not None:
                label += f": p = {_iv(-fit.slope, -fit.slope_high, -fit.slope_low, '.2f')}"
            _points(ax, m["hidden"], m, colors[method], label)
            if fit is not None:
                fitted = m.loc[~m["edge"].astype(bool), "hidden"]
                xs = np.geomspace(fitted.min(), fitted.max(), 20)
                ax.plot(xs, [fit.at(x)[0] for x in xs], color=colors[method], lw=1)
        ticks = sorted(opt["hidden"].unique())
        _log_axes(ax, ticks)
        ax.set_xlabel("hidden size")
        ax.set_ylabel("optimal learning rate")
        ax.set_title(f"{experiment}: optimal LR vs width")
        _legend(ax)
    return fig


def ratio_width_figure(ratios: pd.DataFrame, fit: LogFit | None, fit_row: pd.Series, experiment: str) -> Figure:
    """LoRA/FullFT ratio per width with error bars, hidden / (2 alpha), 10x, and the fitted slope
    extended to TARGET_HIDDEN (an extrapolation)."""
    fig, axes = figures.new_figure()
    ax = axes[0, 0]
    color = figures.rank_color(16)
    with matplotlib.rc_context(figures.RC):
        r = ratios[np.isfinite(ratios["ratio"].astype(float))].sort_values("hidden")
        _points(ax, r["hidden"].astype(float), r.rename(columns={"ratio": "best_lr", "ratio_low": "best_lr_low",
                                                                "ratio_high": "best_lr_high", "open": "edge"}),
                color, "measured LoRA / FullFT")
        hs = sorted(float(h) for h in ratios["hidden"].dropna().unique())
        xs = np.geomspace(min(hs), TARGET_HIDDEN, 30) if hs else np.array([])
        alpha = float(pd.to_numeric(ratios["alpha"], errors="coerce").median()) if len(ratios) else math.nan
        if len(xs) and np.isfinite(alpha):
            ax.plot(xs, xs / (2 * alpha), "--", color="0.4", lw=1, label=f"hidden / (2 alpha), alpha = {alpha:g}")
        ax.axhline(PAPER_RATIO, ls=":", color="0.4", lw=1, label=f"paper: {PAPER_RATIO:g}x")
        if fit is not None and hs:
            fitted = r.loc[~r["open"].astype(bool), "hidden"].astype(float)
            inside = np.geomspace(fitted.min(), fitted.max(), 10)
            ax.plot(inside, [fit.at(x)[0] for x in inside], color=color, lw=1,
                    label=f"fit: slope {_iv(fit.slope, fit.slope_low, fit.slope_high, '.2f')}")
            out = np.geomspace(fitted.max(), TARGET_HIDDEN, 10)
            ax.plot(out, [fit.at(x)[0] for x in out], ":", color=color, lw=1)
            v, lo, hi = fit_row["ratio_at_target"], fit_row["ratio_at_target_low"], fit_row["ratio_at_target_high"]
            if np.isfinite(v):
                err = [[v - lo if np.isfinite(lo) else 0], [hi - v if np.isfinite(hi) else 0]]
                ax.errorbar([TARGET_HIDDEN], [v], yerr=err, fmt="D", mfc="white", color=color, capsize=3,
                            label=f"{'extrapolated' if fit_row['extrapolated'] else 'fitted'} to hidden {TARGET_HIDDEN} "
                                  f"({TARGET_MODEL})")
        _log_axes(ax, [*hs, TARGET_HIDDEN] if hs else [])
        ax.set_xlabel("hidden size")
        ax.set_ylabel("LoRA / FullFT optimal LR")
        ax.set_title(f"{experiment}: optimal-LR ratio vs width")
        _legend(ax, loc="best")
    return fig


def _points(ax, x: pd.Series, t: pd.DataFrame, color: object, label: str, marker: str = "o") -> None:
    """Points (best_lr, interval, edge) with asymmetric error bars; an open point hollow, with an
    arrow on its open side."""
    x = np.asarray(x, dtype=float)
    v, lo, hi = (t[c].astype(float).to_numpy() for c in ("best_lr", "best_lr_low", "best_lr_high"))
    edge = t["edge"].astype(bool).to_numpy()
    err = np.array([np.where(np.isfinite(lo), v - lo, 0.0), np.where(np.isfinite(hi), hi - v, 0.0)])
    if (~edge).any():
        ax.errorbar(x[~edge], v[~edge], yerr=err[:, ~edge], fmt=marker, ms=5, color=color, capsize=3, label=label)
    if edge.any():
        ax.errorbar(x[edge], v[edge], yerr=err[:, edge], fmt=marker, ms=5, mfc="white", color=color, capsize=3,
                    label=None if (~edge).any() else label)
        for xi, vi, l, h in zip(x[edge], v[edge], lo[edge], hi[edge]):
            to = vi * (0.6 if not np.isfinite(l) else 1.67)
            ax.annotate("", xy=(xi, to), xytext=(xi, vi), arrowprops={"arrowstyle": "->", "color": color})


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kw)


def _log_axes(ax, ticks: Sequence[float]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    if ticks:
        ax.set_xticks(list(ticks), [f"{t:g}" for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


# ----------------------------------------------------------------------------- alpha


def _mode(r: pd.Series) -> str:
    m = r.get(ALPHA_MODE)
    return "fixed" if m is None or (isinstance(m, float) and math.isnan(m)) else str(m)


def scale_of(mode: str, alpha: float, rank: float) -> float:
    """The adapter's scale under (lora.alpha_mode, lora.alpha) at a rank (config.lora_scale; NaN: a
    mode this version does not know)."""
    return lora_scale(float(alpha), mode, int(rank)) if mode in ALPHA_MODES else math.nan


def _scale(r: pd.Series) -> float:
    return scale_of(_mode(r), r["lora.alpha"], r["lora.rank"])


def convention_label(mode: str, alpha: float) -> str:
    """The convention (lora.alpha_mode, lora.alpha) as the effective alpha: "alpha = 32", "alpha = r",
    "alpha = 2r", "alpha = 8 sqrt(r)"."""
    a = f"{alpha:g}"
    if mode == "fixed":
        return f"alpha = {a}"
    if mode == "rank":
        return "alpha = r" if alpha == 1 else f"alpha = {a}r"
    if mode == "sqrt_rank":
        return "alpha = sqrt(r)" if alpha == 1 else f"alpha = {a} sqrt(r)"
    return f"alpha = {a} ({mode})"


def scale_text(mode: str, alpha: float) -> str:
    """The adapter's scale under a convention, as a formula in r."""
    a = f"{alpha:g}"
    return {"fixed": f"{a}/r", "rank": a, "sqrt_rank": f"{a}/sqrt(r)"}.get(mode, "?")


def alpha_section(res: Results, runs: pd.DataFrame, sec: Section) -> None:
    """Optimal LR vs rank per alpha convention and FullFT's, the slope of log10 LR* against log10
    rank per convention, and the LoRA/FullFT ratio per (convention, rank)."""
    runs = _sft(runs).copy()
    if not len(runs):
        sec.notes.append("no SFT runs")
        return
    lora = runs["method"] == "lora"
    runs["alpha_mode"] = [(_mode(r) if m else None) for (_, r), m in zip(runs.iterrows(), lora)]
    runs["convention"] = [convention_label(_mode(r), float(r["lora.alpha"])) if m else None
                          for (_, r), m in zip(runs.iterrows(), lora)]
    base = label_runs(runs.drop(columns=[c for c in ("lora.alpha", ALPHA_MODE) if c in runs]))["curve"].to_numpy()
    runs["curve"] = [f"{b} {c}" if isinstance(c, str) else b for b, c in zip(base, runs["convention"])]
    sec.table("lr_sweep", ucurves(runs))
    opt = optimal_lrs(runs)
    meta = runs.drop_duplicates("curve").set_index("curve")
    opt.insert(len(opt.columns), "experiment", sec.experiment)
    for col in ("convention", "alpha_mode"):
        opt[col] = opt["curve"].map(meta[col])
    opt["alpha"] = opt["curve"].map(meta["lora.alpha"]).where(opt["method"] == "lora")
    order = _conventions(opt)
    opt = opt.assign(_c=opt["convention"].map({c: i for i, c in enumerate(order)}).fillna(len(order)))
    opt = opt.sort_values(["_c", "rank"], kind="stable").drop(columns="_c").reset_index(drop=True)
    sec.table("optimal_lr", opt)
    ratios = lr_ratios(opt, runs)
    rows = []
    by_curve = opt.set_index("curve")
    for _, r in ratios.iterrows():
        o = by_curve.loc[r["curve"]]
        rows.append({"convention": o["convention"], "alpha_mode": o["alpha_mode"], "alpha": o["alpha"], "rank": r["rank"],
                     "scale": scale_of(o["alpha_mode"], o["alpha"], r["rank"]),
                     "lora_lr": r["lora_lr"], "lora_lr_low": o["best_lr_low"], "lora_lr_high": o["best_lr_high"],
                     "full_lr": r["full_lr"], "ratio": r["ratio"], "ratio_low": r["ratio_low"],
                     "ratio_high": r["ratio_high"], "open": r["open"], "curve": r["curve"]})
    ratio_t = pd.DataFrame(rows, columns=["convention", "alpha_mode", "alpha", "rank", "scale", "lora_lr", "lora_lr_low",
                                          "lora_lr_high", "full_lr", "ratio", "ratio_low", "ratio_high", "open", "curve"])
    if len(ratio_t):
        ratio_t = ratio_t.assign(_c=ratio_t["convention"].map({c: i for i, c in enumerate(order)}))
        ratio_t = ratio_t.sort_values(["_c", "rank"]).drop(columns="_c").reset_index(drop=True)
    sec.table("alpha_ratios", ratio_t)
    slopes, fits = [], {}
    for conv in order:
        g = opt[opt["convention"] == conv]
        closed = g[~g["edge"].astype(bool) & np.isfinite(g["best_lr"])]
        fit = loglog_fit(closed["rank"].astype(float), closed["best_lr"], _log_sigmas(closed))
        fits[conv] = fit
        slopes.append({"convention": conv, "alpha_mode": g["alpha_mode"].iloc[0], "alpha": g["alpha"].iloc[0],
                       "scale": scale_text(g["alpha_mode"].iloc[0], float(g["alpha"].iloc[0])),
                       "slope": fit.slope if fit else math.nan, "slope_low": fit.slope_low if fit else math.nan,
                       "slope_high": fit.slope_high if fit else math.nan, "n_ranks": len(closed),
                       "ranks": ", ".join(str(int(k)) for k in sorted(closed["rank"])),
                       "left_out": "; ".join(f"r{int(r['rank'])} ({_edge_text(r)})" for _, r in g[g["edge"].astype(bool)].iterrows()),
                       "weighting": fit.weighting if fit else "not fitted: fewer than two ranks with an optimum inside the grid",
                       "level": LEVEL})
    sec.table("alpha_slopes", pd.DataFrame(slopes, columns=["convention", "alpha_mode", "alpha", "scale", "slope", "slope_low",
                                                             "slope_high", "n_ranks", "ranks", "left_out", "weighting", "level"]))
    sec.figure("lr_vs_rank_by_alpha", rank_alpha_figure(opt, fits, order, sec.experiment),
               "Optimal LR (fitted on the seed means, 90% interval) vs rank, one line per alpha convention, log-log; thin "
               "lines: the slope fitted per convention (0: the optimum does not move with rank; -1: it goes as 1/r); "
               "grey band: FullFT's optimum and its interval; hollow with an arrow: an optimum at a grid edge (a bound, "
               "not fitted).")
    _edge_notes(sec, opt, lambda r: FULL if r["method"] == "full" else f"r{int(r['rank'])} {r['convention']}")
    if not (opt["method"] == "full").any():
        sec.notes.append("no FullFT run: no LoRA/FullFT ratio")


def _conventions(opt: pd.DataFrame) -> list[str]:
    """The conventions in a fixed order: by mode (fixed, rank, sqrt_rank, others), then alpha."""
    lo = opt[opt["method"] == "lora"].drop_duplicates("convention")
    rank = {m: i for i, m in enumerate(ALPHA_MODES)}
    lo = lo.assign(_m=lo["alpha_mode"].map(rank).fillna(len(rank)), _a=lo["alpha"].astype(float))
    return list(lo.sort_values(["_m", "_a"])["convention"])


def rank_alpha_figure(opt: pd.DataFrame, fits: dict[str, LogFit | None], order: list[str], experiment: str) -> Figure:
    """Optimal LR vs rank per convention (log-log), error bars, fitted slopes, FullFT's optimum as a
    horizontal band."""
    fig, axes = figures.new_figure(width=5.6)
    ax = axes[0, 0]
    cmap = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context(figures.RC):
        for i, conv in enumerate(order):
            g = opt[(opt["convention"] == conv) & np.isfinite(opt["best_lr"])].sort_values("rank")
            if not len(g):
                continue
            fit = fits.get(conv)
            label = conv + (f": slope {_iv(fit.slope, fit.slope_low, fit.slope_high, '.2f')}" if fit else "")
            _points(ax, g["rank"].astype(float), g, cmap(i % 10), label)
            if fit is not None:
                fitted = g.loc[~g["edge"].astype(bool), "rank"].astype(float)
                xs = np.geomspace(fitted.min(), fitted.max(), 10)
                ax.plot(xs, [fit.at(x)[0] for x in xs], color=cmap(i % 10), lw=0.8, ls="--")
        full = opt[(opt["method"] == "full") & np.isfinite(opt["best_lr"])]
        if len(full):
            f = full.iloc[0]
            lo = f["best_lr_low"] if np.isfinite(f["best_lr_low"]) else f["best_lr"]
            hi = f["best_lr_high"] if np.isfinite(f["best_lr_high"]) else f["best_lr"]
            ax.axhspan(lo, hi, color="0.5", alpha=0.2, lw=0)
            ax.axhline(f["best_lr"], color=figures.FULL_COLOR, lw=1,
                       label=f"{FULL} {f['best_lr']:.2g}" + (" (grid edge)" if f["edge"] else ""))
        ranks = sorted(int(r) for r in opt["rank"].dropna().unique())
        _log_axes(ax, ranks)
        ax.set_xlabel("LoRA rank")
        ax.set_ylabel("optimal learning rate")
        ax.set_title(f"{experiment}: optimal LR vs rank by alpha convention")
        _legend(ax, fontsize=6.5)
    return fig


# ----------------------------------------------------------------------------- the report's words


def _iv(v: float, lo: float, hi: float, spec: str = ".2g") -> str:
    """A value and its interval, "open" for a missing bound ("f" specs print no minus zero)."""

    def f(x: float) -> str:
        if not np.isfinite(x):
            return "open"
        return f"{round(x, int(spec[1:-1])) + 0.0:{spec}}" if spec.endswith("f") else f"{x:{spec}}"

    return f"{f(v)} [{f(lo)}, {f(hi)}]"


def width_summary(sec: Section) -> list[str]:
    """Sentences of the report on a width section: the exponents, the ratio per width, and what
    the slope implies at hidden 4096 (an extrapolation, with its confound)."""
    fit, ratios, rf = sec.tables.get("width_fit"), sec.tables.get("width_ratios"), sec.tables.get("width_ratio_fit")
    lines = []
    if fit is not None and len(fit):
        parts = []
        for _, r in fit.iterrows():
            name = "LoRA" if r["method"] == "lora" else FULL
            parts.append(f"{name} p = {_iv(r['p'], r['p_low'], r['p_high'], '.2f')} over widths {r['widths'] or 'none'}"
                         + (f" (left out: {r['left_out']})" if r["left_out"] else "") if np.isfinite(r["p"])
                         else f"{name}: not fitted ({r['weighting']})")
        lines.append(f"Fitted LR = M (2000 / hidden)^p, {LEVEL:.0%} intervals: " + "; ".join(parts) + ".")
    if ratios is not None and len(ratios):
        lines.append("LoRA/FullFT optimal-LR ratio per width: " + "; ".join(
            f"h={int(r['hidden'])}: {_iv(r['ratio'], r['ratio_low'], r['ratio_high'])}"
            + (" (an optimum at a grid edge)" if r["open"] else "")
            + f", against hidden/(2 alpha) = {r['hidden_over_2alpha']:.3g}" for _, r in ratios.iterrows())
                     + f"; the paper measured {PAPER_RATIO:g}x.")
    if rf is not None and len(rf) and np.isfinite(rf["slope"].iloc[0]):
        r = rf.iloc[0]
        v, lo, hi = r["ratio_at_target"], r["ratio_at_target_low"], r["ratio_at_target_high"]
        if np.isfinite(lo) and np.isfinite(hi):
            holds = f"an interval that {'includes' if lo <= PAPER_RATIO <= hi else 'excludes'} the paper's {PAPER_RATIO:g}x"
        else:
            holds = f"with no interval (too few widths), beside the paper's {PAPER_RATIO:g}x"
        span = f"widths {int(r['fitted_from'])}..{int(r['fitted_to'])}"
        lines.append(f"{'Extrapolation' if r['extrapolated'] else 'At hidden ' + str(TARGET_HIDDEN)}: the ratio's slope "
                     f"against width is {_iv(r['slope'], r['slope_low'], r['slope_high'], '.2f')} (0: a constant ratio, as the "
                     f"paper's {PAPER_RATIO:g}x; 1: proportional to hidden, as hidden/(2 alpha)); at hidden {TARGET_HIDDEN} "
                     f"({TARGET_MODEL}'s width) the fitted line gives a ratio of {_iv(v, lo, hi)}, {holds}. "
                     + (f"This is an extrapolation from {span}" if r["extrapolated"] else f"Fitted over {span}")
                     + f", and {CONFOUND}.")
    elif rf is not None:
        lines.append(f"No extrapolation to hidden {TARGET_HIDDEN}: {rf['weighting'].iloc[0]}.")
    return lines


def alpha_summary(sec: Section) -> list[str]:
    """Sentences of the report on an alpha section: the slope of LR* against rank per convention and
    the LoRA/FullFT ratio per rank."""
    slopes, ratios = sec.tables.get("alpha_slopes"), sec.tables.get("alpha_ratios")
    lines = []
    if slopes is not None and len(slopes):
        lines.append(f"Slope of log10 LR* against log10 rank ({LEVEL:.0%} intervals; 0: the optimum does not move with "
                     "rank, -1: it goes as 1/r): " + "; ".join(
                         f"{r['convention']} (scale {r['scale']}): "
                         + (_iv(r["slope"], r["slope_low"], r["slope_high"], ".2f") if np.isfinite(r["slope"]) else "not fitted")
                         + (f" (left out: {r['left_out']})" if r["left_out"] else "") for _, r in slopes.iterrows()) + ".")
    if ratios is not None and len(ratios):
        per = []
        for conv, g in ratios.groupby("convention", sort=False):
            per.append(f"{conv}: " + ", ".join(f"r{int(r['rank'])} {r['ratio']:.2g}x" + (" (edge)" if r["open"] else "")
                                               for _, r in g.iterrows()))
        lines.append("LoRA/FullFT optimal-LR ratio per rank: " + "; ".join(per) + ".")
    return lines
