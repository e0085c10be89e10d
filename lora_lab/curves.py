"""The curve maths of the analysis: runs labelled by curve, min-over-LR curves, departures from
FullFT, LR U-curves and their fitted optima, LoRA/FullFT optimal-LR ratios.

    from lora_lab.results import load_results
    from lora_lab.curves import label_runs, optimal_lrs, lr_ratios
    res = load_results(["runs/tiny/rank"])
    runs = label_runs(res.plotted())
    opt = optimal_lrs(runs)                   # one row per curve: best_lr and its 90% interval
    lr_ratios(opt, runs)                      # LoRA / FullFT optimal LR per LoRA curve

Everything here takes and returns pandas tables; nothing draws or writes files. The per-kind
sections (lora_lab/sections.py) put these together with the figures (lora_lab/figures.py), the
claims (lora_lab/claims.py) judge what the sections measured, and `lora-lab analyze`
(lora_lab/report.py) writes it all. An experiment's kind is what its runs' `run.analysis` names, else
read off the basename of its name `<scale>/<figure>` (`kind_of`); an experiment of no kind is analysed
by what varies among its runs (EXPLORE, lora_lab/explore.py; `analyses_of`).

Conventions (also stated in the report):
- A run's final loss is its mean train loss over the last 10% of its steps (lora_lab/results.py);
  a diverged run's is +inf at its LR; failed and unfinished runs are left out and counted.
- Runs that differ only in train.seed are replicates: curves and final losses are their mean, with
  the standard error across seeds (the band of the figures, +-1 SE); optima are fitted on the means.
- Curves are smoothed with a trailing mean over 5% of the run's steps before any minimum is taken.
- The noise floor of a comparison is the standard error of the seed-matched (paired) difference
  across seeds (lora_lab/noise.py, `Estimate`); with one seed, the scatter of the paired per-step difference within the
  run (`SINGLE_SEED`), which cannot see what the seed changes and so is only a fallback.
- A gap "exceeds the noise" when it is larger than K_SE standard errors (and than MIN_GAP nats).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lora_lab.noise import GAP_WINDOW, K_SE, MIN_GAP, MIN_WINDOW, window_gap
from lora_lab.results import Results, final_value, seed_of

# The "as good as" margin of an equivalence comparison (C4's MLP-only vs all layers): 2% of the
# reference loss, at least TOL_ABS nats.
TOL_REL = 0.02
TOL_ABS = 0.01
SMOOTH = 0.05
# Keys that make two runs different curves; the LR and the seed do not (a curve is min'd over LRs
# and averaged over seeds).
CURVE_KEYS = ("model.name", "data.name", "data.num_examples", "task", "method", "rank", "layers", "lora.unembed",
              "lora.alpha", "lora.alpha_mode", "lora.init_a_scale", "lora.lr_a_mult", "lora.lr_b_mult", "optim.batch_size",
              "optim.adam_eps", "train.max_steps")
# Keys on which a LoRA curve is paired with the FullFT curve it is compared with.
CONTEXT_KEYS = ("model.name", "data.name", "data.num_examples", "task", "optim.batch_size", "train.max_steps")
# width and alpha: beyond the paper, unjudged (lora_lab/ladder.py)
KINDS = ("early_rank", "rank", "batch", "layers", "rl", "invariance", "capacity", "width", "alpha")
# The analysis of an experiment of no kind: by what varies among its runs (lora_lab/explore.py).
EXPLORE = "explore"
ANALYSES = (*KINDS, EXPLORE)
ANALYSIS_KEY = "run.analysis"
FULL = "FullFT"
# Optimum.edge values for which the best LR is only bounded, or unknown (every LR diverged): the grid
# must be extended to find it.
OPEN_EDGES = ("low", "high", "single", "none")


def kind_of(experiment: str) -> str | None:
    """The figure kind of an experiment `<scale>/<figure>` by its basename's prefix
    (early_rank is checked before rank); None for an experiment of no known kind."""
    base = experiment.rstrip("/").rsplit("/", 1)[-1]
    return next((k for k in KINDS if base.startswith(k)), None)


def analyses_of(runs: pd.DataFrame, experiment: str) -> list[str]:
    """What an experiment is analysed as: the names its runs' run.analysis lists (config.yaml; in the
    order given, over all its runs), else its kind by name (kind_of), else EXPLORE (by what varies).
    Names this version does not know are passed over."""
    named: list[str] = []
    for value in runs.get(ANALYSIS_KEY, pd.Series(dtype=object)).dropna():
        for name in (value,) if isinstance(value, str) else value:
            if name in ANALYSES and name not in named:
                named.append(name)
    return named or [kind_of(experiment) or EXPLORE]


def experiments_of(res: Results, kind: str) -> list[str]:
    """The experiments of one kind among the results (analyses_of)."""
    return [e for e in res.experiments() if kind in analyses_of(res.of(e).runs, e)]


def margin(reference: float) -> float:
    """The equivalence margin around a reference loss: TOL_REL of it, at least TOL_ABS nats."""
    return max(TOL_REL * abs(reference), TOL_ABS)


# ----------------------------------------------------------------------------- curves and labels


def label_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (NaN for FullFT), `layers` (None for FullFT), `lr`, `seed` and `curve`: a readable label
    unique per combination of CURVE_KEYS, naming only what varies among these runs ("LoRA r4",
    "LoRA r4 mlp bs64", "FullFT")."""
    runs = runs.copy()
    full = runs["method"] == "full"
    runs["rank"] = pd.to_numeric(runs.get("lora.rank"), errors="coerce").where(~full)
    runs["layers"] = runs.get("lora.layers", pd.Series(None, index=runs.index)).where(~full, None)
    runs["lr"] = pd.to_numeric(runs["optim.lr"], errors="coerce")
    runs["seed"] = seed_of(runs)
    for k in CURVE_KEYS:
        if k.startswith("lora.") and k in runs:
            runs[k] = runs[k].astype(object).where(~full, None)
    keys = [k for k in CURVE_KEYS if k in runs]
    # FullFT's LoRA keys are None: only what varies among the runs that have the key counts
    varying = [k for k in keys if k not in ("method", "rank") and runs[k].dropna().astype(str).nunique() > 1]
    short = {"layers": "", "optim.batch_size": "bs", "data.num_examples": "N=", "lora.alpha": "alpha=",
             "lora.init_a_scale": "initA=", "lora.lr_a_mult": "lrA x", "lora.lr_b_mult": "lrB x",
             "optim.adam_eps": "eps=", "train.max_steps": "steps=", "lora.unembed": "unembed="}

    def label(r: pd.Series) -> str:
        parts = [FULL if r["method"] == "full" else f"LoRA r{int(r['rank'])}"]
        for k in varying:
            if r[k] is None or (isinstance(r[k], float) and math.isnan(r[k])):
                continue
            name = short.get(k, k.rsplit(".", 1)[-1] + "=")
            parts.append(f"{name}{_short_value(r[k])}")
        return " ".join(parts)

    runs["curve"] = runs.apply(label, axis=1) if len(runs) else pd.Series(dtype=object)
    return runs


def _short_value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).rsplit("/", 1)[-1]


def curve_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per curve: its label and keys, sorted FullFT last, LoRA by rank."""
    keys = [k for k in ("curve", *CURVE_KEYS) if k in runs]
    t = runs[keys].drop_duplicates("curve").copy()
    t["_full"] = t["method"] == "full"
    t = t.sort_values(["_full", "rank", "curve"], na_position="last").drop(columns="_full")
    return t.reset_index(drop=True)


def sort_curves(df: pd.DataFrame, runs: pd.DataFrame, *then: str) -> pd.DataFrame:
    """Rows ordered by curve as in curve_table (LoRA by rank, FullFT last), then by `then`."""
    order = {c: i for i, c in enumerate(curve_table(runs)["curve"])}
    return df.sort_values(["curve", *then], key=lambda c: c.map(order) if c.name == "curve" else c).reset_index(drop=True)


def smoothed(res: Results, runs: pd.DataFrame, column: str = "train_loss", smooth: float = SMOOTH) -> pd.DataFrame:
    """Long table (curve, lr, seed, run_dir, step, examples, value) of each run's `column`, smoothed by
    a trailing mean over `smooth` of its logged points (at least 1; 0: the raw values)."""
    frames = []
    seeds = seed_of(runs)
    for i, r in runs.iterrows():
        c = res.curve(r["run_dir"], column)
        if not len(c):
            continue
        w = max(1, round(smooth * len(c)))
        c = c.assign(value=c[column].rolling(w, min_periods=1).mean(), curve=r["curve"], lr=r["lr"],
                     seed=int(seeds[i]), run_dir=r["run_dir"])
        c["examples"] = c["step"] * (r.get("optim.batch_size") or 1)
        frames.append(c.drop(columns=column))
    cols = ["step", "value", "curve", "lr", "seed", "run_dir", "examples"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def seed_mean(long: pd.DataFrame) -> pd.DataFrame:
    """(curve, lr, step, value, sem, n_seeds, examples): the mean over seeds at each (curve, lr, step)
    and its standard error across seeds (NaN with one seed; runs of one seed are averaged first)."""
    cols = ["curve", "lr", "step", "value", "sem", "n_seeds", "examples"]
    if not len(long):
        return pd.DataFrame(columns=cols)
    per_seed = long.groupby(["curve", "lr", "step", "seed"], as_index=False).agg(value=("value", "mean"),
                                                                                examples=("examples", "first"))
    out = per_seed.groupby(["curve", "lr", "step"], as_index=False).agg(
        value=("value", "mean"), sd=("value", "std"), n_seeds=("seed", "nunique"), examples=("examples", "first"))
    out["sem"] = out["sd"] / np.sqrt(out["n_seeds"])
    return out[cols]


def pointwise_min(res: Results, runs: pd.DataFrame, column: str = "train_loss", smooth: float = SMOOTH,
                  maximize: bool = False) -> pd.DataFrame:
    """(curve, step, examples, value, lr, sem, n_seeds): for each curve and step, the best over LRs of
    the (smoothed, seed-averaged) `column`, the LR that gave it, and that point's standard error across
    seeds (C1's min-loss curves)."""
    long = seed_mean(smoothed(res, res.plotted(runs), column, smooth))
    cols = ["curve", "step", "examples", "value", "lr", "sem", "n_seeds"]
    if not len(long):
        return pd.DataFrame(columns=cols)
    best = long.groupby(["curve", "step"])["value"].idxmax() if maximize else long.groupby(["curve", "step"])["value"].idxmin()
    return sort_curves(long.loc[best.values, cols], runs, "step")


def at_chosen_lr(res: Results, runs: pd.DataFrame, chosen: pd.DataFrame, column: str = "train_loss") -> pd.DataFrame:
    """(curve, seed, step, value): each seed's raw (unsmoothed) `column` at the LR `chosen` picked for
    that curve and step (pointwise_min's lr), so that the seeds of a min-over-LR curve can be paired."""
    raw = smoothed(res, res.plotted(runs), column, smooth=0.0)
    if not len(raw) or not len(chosen):
        return pd.DataFrame(columns=["curve", "seed", "step", "value"])
    at = raw.merge(chosen[["curve", "step", "lr"]], on=["curve", "step", "lr"])
    return at.groupby(["curve", "seed", "step"], as_index=False)["value"].mean()


def reference_curves(runs: pd.DataFrame) -> dict[str, str]:
    """LoRA curve -> the FullFT curve of the same context (model, data, batch size, steps), for the
    LoRA curves that have one."""
    keys = curve_table(runs).set_index("curve")
    ctx = [k for k in CONTEXT_KEYS if k in keys]
    context = {c: tuple(str(v) for v in keys.loc[c, ctx]) for c in keys.index}
    fulls = {context[c]: c for c in keys.index[keys["method"] == "full"]}
    return {c: fulls[context[c]] for c in keys.index[keys["method"] == "lora"] if context[c] in fulls}


def _sliding_gap(g: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """window_gap over every window of w consecutive rows of g (steps x seeds), vectorised: the mean
    gap and its SE (across seeds; one seed: from successive differences within the window)."""
    c = np.vstack([np.zeros((1, g.shape[1])), np.cumsum(g, axis=0)])
    per_seed = (c[w:] - c[:-w]) / w  # each seed's mean over each window
    n = g.shape[1]
    if n > 1:
        return per_seed.mean(axis=1), per_seed.std(axis=1, ddof=1) / math.sqrt(n)
    if w < 2:
        return per_seed[:, 0], np.full(len(per_seed), math.nan)
    d2 = np.concatenate([[0.0], np.cumsum(np.diff(g[:, 0]) ** 2)])
    ss = d2[w - 1:] - d2[:len(d2) - w + 1]  # the w - 1 squared successive differences inside each window
    return per_seed[:, 0], np.sqrt(ss / (w - 1) / 2) / math.sqrt(w)


def departures(curves: pd.DataFrame, reference: str | dict[str, str] = FULL, window: float = GAP_WINDOW,
               k: float = K_SE) -> pd.DataFrame:
    """Whether, and from when, each curve is above its reference by more than the noise.

    `curves`: (curve, step, value) and, for several seeds, `seed` (at_chosen_lr); `reference`: one
    curve for all, or a dict curve -> reference (reference_curves). The gap is the seed-matched
    difference curve - reference. Over a window of `window` of the compared steps (at least
    MIN_WINDOW), its mean is an Estimate (window_gap: the SE across seeds, or with one seed from the
    scatter within the window). A curve departs when the mean gap over the last window exceeds k
    SE (and MIN_GAP); `departs_at_step` is the last step of the first window, sliding one step at a
    time, from which every later window does too (None: it does not depart)."""
    refs = reference if isinstance(reference, dict) else {c: reference for c in curves["curve"].unique() if c != reference}
    if "seed" not in curves:
        curves = curves.assign(seed=0)
    piv = {name: g.pivot_table(index="step", columns="seed", values="value", aggfunc="mean")
           for name, g in curves.groupby("curve", sort=False)}
    rows = []
    for name in [c for c in curves["curve"].unique() if c in refs and refs[c] in piv]:
        a, b = piv[name], piv[refs[name]]
        seeds = a.columns.intersection(b.columns)
        gaps = (a[seeds] - b[seeds]).dropna()
        if not len(gaps) or not len(seeds):
            continue
        steps = gaps.index.to_numpy()
        w = min(len(steps), max(MIN_WINDOW, math.ceil(window * len(steps))))
        means, ses = _sliding_gap(gaps.to_numpy(dtype=float), w)
        over = means > np.maximum(k * np.nan_to_num(ses), MIN_GAP)  # Estimate.exceeds, every window at once
        last_ok = np.flatnonzero(~over)
        start = 0 if not len(last_ok) else last_ok[-1] + 1
        final = window_gap(gaps.iloc[-w:])
        ref_mean = b.loc[steps, seeds].mean(axis=1)
        gap_mean = gaps.mean(axis=1)
        ref_end = float(ref_mean.iloc[-w:].mean())
        rows.append({"curve": name, "reference": refs[name],
                     "departs_at_step": int(steps[w - 1 + start]) if start < len(over) else None,
                     "gap": final.value, "gap_se": final.se, "n_seeds": final.n_seeds, "noise": final.source,
                     "rel_gap": final.value / abs(ref_end) if ref_end else math.nan,
                     "max_rel_gap": float((gap_mean / ref_mean.abs()).max()),
                     "final_rel_gap": float(gap_mean.iloc[-1] / abs(ref_mean.iloc[-1])),
                     "window_steps": w, "window_from": int(steps[-w]), "steps_compared": len(steps)})
    return pd.DataFrame(rows, columns=["curve", "reference", "departs_at_step", "gap", "gap_se", "n_seeds", "noise",
                                       "rel_gap", "max_rel_gap", "final_rel_gap", "window_steps", "window_from",
                                       "steps_compared"])


def value_at_step(res: Results, runs: pd.DataFrame, step: int, column: str = "train_loss",
                  window: float = 0.1) -> pd.DataFrame:
    """(value, sem) per run_dir: each run's mean `column` over the last `window` of its logged
    points up to `step` (a constant-LR run stopped at `step` is a run of `step` steps); +inf for a
    run that diverged by then, NaN for one that did not reach it."""
    out = {}
    for _, r in runs.iterrows():
        c = res.curve(r["run_dir"], column)
        c = c[c["step"] <= step]
        diverged_by = r.get("diverged_at_step")
        if r["status"] == "diverged" and pd.notna(diverged_by) and diverged_by <= step:
            out[r["run_dir"]] = (math.inf, 0.0)
        elif len(c) and c["step"].iloc[-1] == step:
            out[r["run_dir"]] = final_value(c[column].to_numpy(), window)
        else:
            out[r["run_dir"]] = (math.nan, math.nan)
    return pd.DataFrame.from_dict(out, orient="index", columns=["value", "sem"])


# ----------------------------------------------------------------------------- LR U-curves and optima


def ucurves(runs: pd.DataFrame, value: str = "final_loss", sem: str | None = "final_loss_sem") -> pd.DataFrame:
    """(curve, lr, value, sem, n_runs, n_seeds, diverged): the runs' `value` per curve and LR,
    averaged over seeds (a diverged seed makes the point +inf, or -inf for a reward). The standard
    error is that across seeds, or the single run's own (over its final window). A final loss (nats
    per target token) comes with `final_bpb` beside it, the same window in bits per UTF-8 byte of the
    targets where the runs logged it (comparable across tokenizers)."""
    plotted = runs[runs["status"].isin(("completed", "diverged"))]
    plotted = plotted.assign(seed=seed_of(plotted))
    bpb = bool(value == "final_loss" and "final_bpb" in plotted
               and pd.to_numeric(plotted["final_bpb"], errors="coerce").notna().any())
    rows = []
    for (name, lr), g in plotted.groupby(["curve", "lr"], sort=False):
        v = g[value].astype(float)
        if len(g) > 1:
            s = float(v.std(ddof=1) / math.sqrt(len(g))) if np.isfinite(v).all() else 0.0
        else:
            s = float(g[sem].iloc[0]) if sem and sem in g and pd.notna(g[sem].iloc[0]) else 0.0
        rows.append({"curve": name, "lr": float(lr), "value": float(v.mean()), "sem": s, "n_runs": len(g),
                     "n_seeds": int(g["seed"].nunique()), "diverged": int((g["status"] == "diverged").sum())})
        if bpb:
            rows[-1]["final_bpb"] = float(pd.to_numeric(g["final_bpb"], errors="coerce").mean())
    t = pd.DataFrame(rows, columns=["curve", "lr", "value", "sem", "n_runs", "n_seeds", "diverged"]
                     + (["final_bpb"] if bpb else []))
    return sort_curves(t, runs, "lr")


@dataclass(frozen=True)
class Optimum:
    """An optimal LR: `best_lr` fitted around the best grid point, [low, high] its 90% interval
    (NaN on a side where the grid ends: the interval is open there), `edge` "low"/"high" when the best
    grid point is the grid's lowest/highest LR, "single" for a one-point grid, "none" when every point
    diverged."""

    best_lr: float
    low: float
    high: float
    best_value: float
    grid_lr: float
    edge: str
    fitted: bool

    @property
    def open(self) -> bool:
        """The optimum is a bound, not a point: at the grid's lowest or highest LR, a one-LR grid, or
        none (every LR diverged)."""
        return self.edge in OPEN_EDGES


def _vertex(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertex of the parabola through three points (rows of y: draws); the middle point's x where
    the parabola is not convex; clipped to [x0, x2]."""
    x0, x1, x2 = x
    y0, y1, y2 = y[..., 0], y[..., 1], y[..., 2]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / den
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.where(a > 0, -b / (2 * a), x[np.argmin(y, axis=-1)])
    return np.clip(v, x0, x2)


def fit_optimum(lrs: Iterable[float], values: Iterable[float], sems: Iterable[float] | None = None,
                maximize: bool = False, draws: int = 4000, level: float = 0.9, seed: int = 0) -> Optimum:
    """The optimal LR of one U-curve.

    The best grid point and its two neighbours are fitted by a parabola in log10(LR); its vertex
    is the estimate (it lies between the neighbours). The interval is the central `level` range
    of the vertex when the three values are redrawn from normal distributions with their standard
    errors (`sems`; 0 gives a point interval: it covers measurement noise, not the parabola's misfit).
    At a grid edge the best grid LR is returned, with the interval open on the edge's side. A
    neighbour that diverged (inf) cannot be fitted: the estimate is the best grid LR, the interval
    its neighbours."""
    lrs = np.asarray(list(lrs), dtype=float)
    order = np.argsort(lrs)
    lrs = lrs[order]
    y = np.asarray(list(values), dtype=float)[order]
    s = np.zeros_like(y) if sems is None else np.nan_to_num(np.asarray(list(sems), dtype=float)[order])
    if maximize:
        y = -y
    y = np.where(np.isnan(y), np.inf, y)
    if not len(y) or not np.isfinite(y).any():
        return Optimum(math.nan, math.nan, math.nan, math.nan, math.nan, "none", False)
    i = int(np.argmin(y))
    best_value = float(-y[i] if maximize else y[i])
    n = len(y)
    if n == 1:
        return Optimum(lrs[0], math.nan, math.nan, best_value, lrs[0], "single", False)
    if i == 0:
        return Optimum(lrs[0], math.nan, lrs[1], best_value, lrs[0], "low", False)
    if i == n - 1:
        return Optimum(lrs[-1], lrs[-2], math.nan, best_value, lrs[-1], "high", False)
    x = np.log10(lrs[i - 1:i + 2])
    yy, ss = y[i - 1:i + 2], s[i - 1:i + 2]
    if not np.isfinite(yy).all():
        return Optimum(lrs[i], lrs[i - 1], lrs[i + 1], best_value, lrs[i], "", False)
    est = float(_vertex(x, yy[None, :])[0])
    rng = np.random.default_rng(seed)
    sample = _vertex(x, yy + rng.standard_normal((draws, 3)) * ss)
    lo, hi = np.quantile(sample, [(1 - level) / 2, (1 + level) / 2])
    return Optimum(10**est, 10 ** min(lo, est), 10 ** max(hi, est), best_value, lrs[i], "", True)


def optimal_lrs(runs: pd.DataFrame, value: str = "final_loss", sem: str | None = "final_loss_sem",
                maximize: bool = False) -> pd.DataFrame:
    """One row per curve with at least one plotted run: the fitted optimum of its U-curve (on the
    seed means, with their SE across seeds) and its keys (the columns of optimal_lr.csv, plus the
    best grid LR, the seeds, the curve label and the experiment). `edge` is true where the optimum is
    a bound (OPEN_EDGES)."""
    uc = ucurves(runs, value, sem)
    keys = curve_table(runs).set_index("curve")
    rows = []
    for name, g in uc.groupby("curve", sort=False):
        o = fit_optimum(g["lr"], g["value"], g["sem"], maximize=maximize)
        k = keys.loc[name]
        full = k["method"] == "full"
        at = g[g["lr"] == o.grid_lr]
        rows.append({"method": k["method"], "rank": None if full else int(k["rank"]),
                     "layers": None if full else k["layers"], "batch_size": k.get("optim.batch_size"),
                     "best_lr": o.best_lr, "best_lr_low": o.low, "best_lr_high": o.high,
                     "best_final_loss": o.best_value, "model": k.get("model.name"),
                     # edge: the optimum is a bound, not a point (lora-lab fit-lr leaves such rows out)
                     "edge": o.open, "edge_side": o.edge,
                     "n_lrs": len(g), "grid_lr": o.grid_lr, "n_seeds": int(at["n_seeds"].iloc[0]) if len(at) else 0,
                     "curve": name})
    t = pd.DataFrame(rows)
    if len(t):
        t["rank"] = t["rank"].astype("Int64")
    return t


def lr_ratios(optimal: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """LoRA / FullFT optimal-LR ratio for each LoRA curve, against the FullFT curve of the same
    context (model, data, batch size, steps); the interval combines both intervals (NaN: open)."""
    refs = reference_curves(runs)
    opt = optimal.set_index("curve")
    rows = []
    for name, o in opt[opt["method"] == "lora"].iterrows():
        if refs.get(name) not in opt.index:
            continue
        f = opt.loc[refs[name]]
        rows.append({"curve": name, "rank": o["rank"], "layers": o["layers"], "lora_lr": o["best_lr"], "full_lr": f["best_lr"],
                     "ratio": o["best_lr"] / f["best_lr"], "ratio_low": o["best_lr_low"] / f["best_lr_high"],
                     "ratio_high": o["best_lr_high"] / f["best_lr_low"],
                     "open": bool(o["edge"] or f["edge"])})
    return pd.DataFrame(rows, columns=["curve", "rank", "layers", "lora_lr", "full_lr", "ratio", "ratio_low", "ratio_high", "open"])


def seed_ratios(runs: pd.DataFrame, value: str = "final_loss", sem: str | None = "final_loss_sem") -> pd.DataFrame:
    """lr_ratios of each seed's runs alone (its own U-curves and optima), with a `seed` column: the
    seed-to-seed spread of the LoRA/FullFT optimal-LR ratio."""
    frames = []
    seeds = seed_of(runs)
    for seed in sorted(seeds.unique()):
        one = runs[seeds == seed]
        r = lr_ratios(optimal_lrs(one, value, sem), one)
        if len(r):
            frames.append(r.assign(seed=int(seed)))
    cols = ["curve", "rank", "layers", "lora_lr", "full_lr", "ratio", "ratio_low", "ratio_high", "open", "seed"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
