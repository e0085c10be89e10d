"""Figures of the analysis: one style, one palette by rank, PNG and PDF.

Colour is the rank (viridis over log2 rank 1..512, the same rank the same colour in every figure),
black is FullFT; line style is the layer set (all solid, MLP dashed, attention dotted). Steps and
LRs are on log axes, as in the paper's figures. A line that is a mean over seeds (a table with `sem`
and `n_seeds` columns, n_seeds > 1) is drawn with a shaded band of +-1 standard error across seeds. The functions take the tidy tables of
lora_lab/curves.py and return matplotlib Figures (no pyplot state), which `save` writes as PNG and
PDF; a notebook shows them with `display(fig)`.

    from lora_lab import figures
    fig = figures.curves_figure(curves, styles, ylabel="train loss (nats)")
    figures.save(fig, out_dir, "rank_curves")
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

FULL_COLOR = "black"
LAYER_STYLE = {"all": "-", "mlp": "--", "attn": ":"}
MAX_RANK_LOG2 = 9  # rank 512, the largest the paper (and the config) uses
RC = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 7.5, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
    "grid.alpha": 0.3, "grid.linewidth": 0.6, "lines.linewidth": 1.5, "legend.frameon": False,
}


def rank_color(rank: float | None) -> tuple:
    """The colour of a LoRA rank (None/NaN: FullFT, black)."""
    if rank is None or (isinstance(rank, float) and math.isnan(rank)):
        return matplotlib.colors.to_rgba(FULL_COLOR)
    t = min(max(math.log2(max(float(rank), 1.0)) / MAX_RANK_LOG2, 0.0), 1.0)
    return matplotlib.colormaps["viridis"](0.88 * t)  # the top of viridis is too pale on white


def curve_styles(table: pd.DataFrame, labels: Mapping[str, str] | None = None) -> dict[str, dict]:
    """curve -> matplotlib keyword arguments (color, linestyle, label) from a curve table
    (curves.curve_table); `labels` renames curves in legends."""
    styles = {}
    for _, r in table.iterrows():
        rank = None if r["method"] == "full" else r.get("rank")
        styles[r["curve"]] = {"color": rank_color(rank), "linestyle": LAYER_STYLE.get(r.get("layers") or "all", "-"),
                              "label": (labels or {}).get(r["curve"], r["curve"])}
    return styles


def sequential_colors(values: list, cmap: str = "cividis") -> dict:
    """A colour per value of a second axis (batch size, data size), ordered."""
    vals = sorted(set(values))
    cm = matplotlib.colormaps[cmap]
    return {v: cm(0.1 + 0.8 * i / max(len(vals) - 1, 1)) for i, v in enumerate(vals)}


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 5.2, height: float = 3.4, **kw) -> tuple[Figure, np.ndarray]:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=(width, height), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """Write <out_dir>/<name>.png and .pdf (no timestamps in the PDF, so reruns give the same file)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    with matplotlib.rc_context(RC):
        fig.savefig(paths[0], dpi=150)
        fig.savefig(paths[1], metadata={"CreationDate": None, "ModDate": None})
    return paths


def _legend(ax, **kw) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, **kw)


BAND_ALPHA = 0.2


def seed_band(ax, c: pd.DataFrame, x: str, y: str, color: object) -> None:
    """The +-1 SE band across seeds of one line, where it is a mean over two or more seeds."""
    if "sem" not in c or "n_seeds" not in c:
        return
    c = c[(pd.to_numeric(c["n_seeds"], errors="coerce") > 1) & np.isfinite(c[y].astype(float))
          & np.isfinite(pd.to_numeric(c["sem"], errors="coerce"))]
    if len(c) >= 2:
        v, s = c[y].astype(float), c["sem"].astype(float)
        ax.fill_between(c[x].astype(float), v - s, v + s, color=color, alpha=BAND_ALPHA, lw=0)


def _plot_lines(ax, data: pd.DataFrame, styles: Mapping[str, dict], x: str, y: str = "value", **kw) -> None:
    for name in styles:
        c = data[data["curve"] == name].sort_values(x)
        if len(c):
            ax.plot(c[x], c[y], **{**styles[name], **kw})
            seed_band(ax, c, x, y, styles[name].get("color"))


def curves_figure(curves: pd.DataFrame, styles: Mapping[str, dict], *, x: str = "step", logx: bool = True,
                  ylabel: str = "train loss (nats)", title: str = "", reference: str | None = None,
                  relative: bool = True, band: float | None = None, marks: Mapping[str, float] | None = None,
                  diff_label: str | None = None, lower: pd.DataFrame | None = None, lower_logy: bool = False,
                  diff_sem: pd.DataFrame | None = None) -> Figure:
    """Curves (curve, x, value) per curve, with a +-1 SE band where a curve is a mean over seeds
    (columns sem, n_seeds); with `reference`, a lower panel of each curve minus the reference curve
    (relative: divided by it), a grey band of +-`band`, a band of +-1 SE of the seed-matched
    difference from `diff_sem` (curve, x, sem), and a dot at `marks[curve]` (an x where something
    happens, e.g. the step a rank leaves FullFT). `lower` instead gives the lower panel's lines
    directly (curve, x, value), e.g. differences to several references."""
    rows = 2 if (reference or lower is not None) else 1
    fig, axes = new_figure(rows, 1, height=3.4 if rows == 1 else 5.0, sharex=True,
                           gridspec_kw={"height_ratios": [2, 1]} if rows == 2 else None)
    ax = axes[0, 0]
    with matplotlib.rc_context(RC):
        _plot_lines(ax, curves, styles, x)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if logx:
            ax.set_xscale("log")
        _legend(ax, ncols=2 if len(styles) > 6 else 1)
        if reference:
            low = axes[1, 0]
            ref = curves[curves["curve"] == reference].set_index(x)["value"]
            for name, st in styles.items():
                if name == reference:
                    continue
                c = curves[curves["curve"] == name].set_index(x)["value"]
                common = c.index.intersection(ref.index).sort_values()
                if not len(common):
                    continue
                d = c.loc[common] - ref.loc[common]
                if relative:
                    d = d / ref.loc[common].abs()
                low.plot(common, d, **{k: v for k, v in st.items() if k != "label"})
                if diff_sem is not None:
                    se = diff_sem[diff_sem["curve"] == name].set_index(x)["sem"].reindex(common).astype(float)
                    if relative:
                        se = se / ref.loc[common].abs()
                    ok = np.isfinite(se.to_numpy())
                    if ok.sum() >= 2:
                        low.fill_between(np.asarray(common)[ok], (d - se).to_numpy()[ok], (d + se).to_numpy()[ok],
                                         color=st["color"], alpha=BAND_ALPHA, lw=0)
                if marks and marks.get(name) is not None and marks[name] in d.index:
                    low.plot([marks[name]], [d.loc[marks[name]]], "o", color=st["color"], ms=4)
            if band:
                low.axhspan(-band, band, color="grey", alpha=0.15, lw=0)
            low.axhline(0, color=FULL_COLOR, lw=0.8)
            low.set_ylabel(diff_label or (f"relative gap to {reference}" if relative else f"minus {reference}"))
            low.set_xlabel(x)
        elif lower is not None:
            low = axes[1, 0]
            _plot_lines(low, lower, {k: {kk: vv for kk, vv in v.items() if kk != "label"} for k, v in styles.items()}, x)
            if lower_logy:
                low.set_yscale("log")
            low.set_ylabel(diff_label or "")
            low.set_xlabel(x)
        else:
            ax.set_xlabel(x)
    return fig


def ucurve_figure(uc: pd.DataFrame, optimal: pd.DataFrame | None, styles: Mapping[str, dict], *,
                  ylabel: str = "final train loss (nats)", title: str = "", maximize: bool = False,
                  reference: tuple[str, float] | None = None) -> Figure:
    """Final value vs LR per curve (log LR), the mean over seeds with a +-1 SE band where there are
    several; diverged LRs as crosses at the worst edge of the plot;
    the fitted optimum as a marker with its interval (an arrow where the interval is open);
    `reference` = (label, value): a dashed horizontal line, e.g. the base model's accuracy."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    finite = uc[np.isfinite(uc["value"])]
    lo, hi = (finite["value"].min(), finite["value"].max()) if len(finite) else (0.0, 1.0)
    if reference is not None and not np.isfinite(reference[1]):
        reference = None
    if reference is not None:
        lo, hi = min(lo, reference[1]), max(hi, reference[1])
    pad = 0.08 * (hi - lo or 1.0)
    worst = (lo - pad) if maximize else (hi + pad)
    with matplotlib.rc_context(RC):
        for name, st in styles.items():
            c = uc[uc["curve"] == name].sort_values("lr")
            if not len(c):
                continue
            ok = np.isfinite(c["value"])
            ax.plot(c.loc[ok, "lr"], c.loc[ok, "value"], marker="o", ms=3, **st)
            seed_band(ax, c[ok], "lr", "value", st.get("color"))
            if (~ok).any():
                ax.plot(c.loc[~ok, "lr"], [worst] * int((~ok).sum()), "x", color=st["color"], ms=6)
            if optimal is not None and name in set(optimal["curve"]):
                o = optimal[optimal["curve"] == name].iloc[0]
                if np.isfinite(o["best_lr"]):
                    yv = o["best_final_loss"] if "best_final_loss" in o else o.get("best_value")
                    left = o["best_lr"] - o["best_lr_low"] if np.isfinite(o["best_lr_low"]) else 0
                    right = o["best_lr_high"] - o["best_lr"] if np.isfinite(o["best_lr_high"]) else 0
                    ax.errorbar([o["best_lr"]], [yv], xerr=[[left], [right]], fmt="D", ms=5, color=st["color"],
                                capsize=3, mfc="white")
                    for side, open_ in (("low", not np.isfinite(o["best_lr_low"])), ("high", not np.isfinite(o["best_lr_high"]))):
                        if open_:
                            ax.annotate("", xy=(o["best_lr"] * (0.6 if side == "low" else 1.67), yv), xytext=(o["best_lr"], yv),
                                        arrowprops={"arrowstyle": "->", "color": st["color"]})
        if reference is not None:
            ax.axhline(reference[1], ls="--", lw=1, color="0.5", label=reference[0])
        ax.set_xscale("log")
        ax.set_ylim((worst - pad / 2, hi + pad) if maximize else (lo - pad, worst + pad / 2))
        ax.set_xlabel("learning rate")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _legend(ax, ncols=2 if len(styles) > 6 else 1)
    return fig


def lines_figure(data: pd.DataFrame, styles: Mapping[str, dict], *, x: str, y: str = "value", logx: bool = True,
                 logy: bool = False, xlabel: str = "", ylabel: str = "", title: str = "",
                 hlines: Mapping[str, float] | None = None, vlines: Mapping[str, float] | None = None,
                 xticks: list[float] | None = None) -> Figure:
    """One line per curve of (x, y) points with markers; optional horizontal and vertical reference
    lines per curve (dashed, in the curve's colour: e.g. FullFT's loss at a data size, or the
    parameter count where capacity should run out)."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    with matplotlib.rc_context(RC):
        _plot_lines(ax, data, styles, x, y, marker="o", ms=3)
        for name, v in (hlines or {}).items():
            ax.axhline(v, color=styles[name]["color"], ls="--", lw=0.9)
        for name, v in (vlines or {}).items():
            ax.axvline(v, color=styles[name]["color"], ls=":", lw=0.9)
        if logx:
            ax.set_xscale("log", base=2 if xticks else 10)
        if logy:
            ax.set_yscale("log")
        if xticks:
            ax.set_xticks(xticks, [f"{t:g}" for t in xticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(xlabel or x)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        _legend(ax, ncols=2 if len(styles) > 6 else 1)
    return fig


def panels_figure(panels: Mapping[str, pd.DataFrame], styles: Mapping[str, dict], *, x: str = "examples",
                  logx: bool = True, ylabel: str = "train loss (nats)", title: str = "") -> Figure:
    """Small multiples: one panel per key of `panels` (e.g. LoRA r4, FullFT), each with lines per
    curve (e.g. batch sizes), shared y axis."""
    n = max(len(panels), 1)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(rows, cols, width=3.0 * cols, height=2.6 * rows, sharey=True)
    with matplotlib.rc_context(RC):
        for ax, (name, data) in zip(axes.flat, panels.items()):
            _plot_lines(ax, data, {k: v for k, v in styles.items() if k in set(data["curve"])}, x)
            ax.set_title(name)
            if logx:
                ax.set_xscale("log")
            ax.set_xlabel(x)
            _legend(ax)
        for ax in axes[:, 0]:
            ax.set_ylabel(ylabel)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        if title:
            fig.suptitle(title)
    return fig


def ratio_steps_figure(table: pd.DataFrame, styles: Mapping[str, dict], references: Mapping[str, float], *,
                       title: str = "") -> Figure:
    """LoRA/FullFT optimal-LR ratio (curve, step, ratio, open) against the training length at which
    the optima were fitted, one line per curve (hollow markers: a ratio built on an optimum at a
    grid edge, only a bound), and horizontal reference lines {label: ratio} (e.g. 10x, 15x,
    hidden / (2 alpha))."""
    fig, axes = new_figure()
    ax = axes[0, 0]
    with matplotlib.rc_context(RC):
        for name, st in styles.items():
            c = table[(table["curve"] == name) & np.isfinite(table["ratio"].astype(float))].sort_values("step")
            if not len(c):
                continue
            ax.plot(c["step"], c["ratio"], **st)
            closed = ~c["open"].astype(bool)
            ax.plot(c.loc[closed, "step"], c.loc[closed, "ratio"], "o", ms=4, color=st["color"])
            ax.plot(c.loc[~closed, "step"], c.loc[~closed, "ratio"], "o", ms=4, mfc="white", color=st["color"])
        for (label, v), ls in zip(references.items(), ("--", ":", "-.", (0, (5, 1)))):
            if v is not None and np.isfinite(v):
                ax.axhline(v, color="0.4", ls=ls, lw=1, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain)
            axis.set_minor_formatter(plain)
        ax.grid(True, which="major")
        ax.set_xlabel("training steps at which the optima are fitted")
        ax.set_ylabel("LoRA / FullFT optimal LR")
        ax.set_title(title)
        _legend(ax, ncols=2, loc="best")
    return fig
