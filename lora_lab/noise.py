"""The noise yardstick of the analysis: a measured number with its standard error (`Estimate`),
from the spread across seeds of seed-matched (paired) differences, or with one seed from the scatter
within the run; and the per-seed tables the rules pair up.

    from lora_lab.noise import paired, seed_values
    sv = seed_values(runs, optimal)           # each seed's final loss at each curve's best grid LR
    est = paired(sv[sv["curve"] == "LoRA r1"], sv[sv["curve"] == "FullFT"])
    est.exceeds()                             # beyond K_SE standard errors (and MIN_GAP nats)?

The departures (lora_lab/curves.py) and the verdict rules (lora_lab/claims.py) judge differences
against it: a gap "exceeds the noise" when it is larger than K_SE standard errors (and than MIN_GAP
nats). With one seed the within-run scatter (`SINGLE_SEED`) stands in; it cannot see what the seed
changes and so is only a fallback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lora_lab.results import seed_of

# The noise yardstick (the rules of lora_lab/claims.py and the departures of lora_lab/curves.py): a
# difference counts when it exceeds K_SE standard errors. 3 because the SE comes from few seeds (with
# 3 seeds, Student's t with 2 degrees of freedom puts the one-sided 95% point at 2.9) and because the
# departure step looks at many windows.
K_SE = 3.0
# C1 judges the mean paired gap over the last GAP_WINDOW of the steps (at least MIN_WINDOW steps):
# long enough to average the per-step noise down, late enough to be "the end of training".
GAP_WINDOW = 0.2
MIN_WINDOW = 3
# A gap smaller than this (nats) is no gap whatever the noise (identical replicates have an SE of 0).
MIN_GAP = 1e-3
SINGLE_SEED = "single seed: within-run scatter"


@dataclass(frozen=True)
class Estimate:
    """A measured number and its noise floor: `se`, the standard error a rule judges it against,
    from `n_seeds` seed-matched replicates (the spread across seeds) or, with one seed, from the
    scatter within the run; `source` says which (NaN se: no estimate)."""

    value: float
    se: float
    n_seeds: int
    source: str

    def exceeds(self, k: float = K_SE) -> bool:
        """Larger than k standard errors and than MIN_GAP (an unknown se counts as 0: only MIN_GAP)."""
        se = self.se if np.isfinite(self.se) else 0.0
        return bool(np.isfinite(self.value) and self.value > max(k * se, MIN_GAP))


def noise_source(n_seeds: int) -> str:
    return f"seed-to-seed, {n_seeds} seeds" if n_seeds >= 2 else SINGLE_SEED


def scatter_se(x: Iterable[float]) -> float:
    """Standard error of the mean of a series from its own scatter: the per-point SD estimated from
    successive differences (sqrt(mean(diff^2) / 2), insensitive to a slow trend such as a gap that
    opens), divided by sqrt(n). NaN for fewer than two points."""
    x = np.asarray(list(x), dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan
    return float(math.sqrt(np.mean(np.diff(x) ** 2) / 2) / math.sqrt(x.size))


def across_seeds(values: Iterable[float], fallback_se: float = math.nan) -> Estimate:
    """The mean of per-seed values and its SE across seeds; with one value, `fallback_se` (the
    within-run noise of that one seed)."""
    v = np.asarray(list(values), dtype=float)
    n = int(v.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, "no data")
    if n == 1:
        return Estimate(float(v[0]), float(fallback_se), 1, SINGLE_SEED)
    se = float(v.std(ddof=1) / math.sqrt(n)) if np.isfinite(v).all() else math.nan
    return Estimate(float(v.mean()), se, n, noise_source(n))


def seed_difference(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """(seed, value, sem): a - b seed by seed, for tables (seed, value, sem) such as seed_values of two
    curves, at the seeds both have; the runs' own standard errors combine in quadrature."""
    a, b = a.groupby("seed")[["value", "sem"]].mean(), b.groupby("seed")[["value", "sem"]].mean()
    common = a.index.intersection(b.index)
    return pd.DataFrame({"seed": common, "value": (a.loc[common, "value"] - b.loc[common, "value"]).to_numpy(),
                         "sem": np.hypot(a.loc[common, "sem"].fillna(0), b.loc[common, "sem"].fillna(0)).to_numpy()})


def estimate(per_seed: pd.DataFrame) -> Estimate:
    """The Estimate of a (seed, value, sem) table: mean over seeds, SE across them; with one seed, its
    own `sem` (the within-run scatter)."""
    fallback = float(per_seed["sem"].iloc[0]) if len(per_seed) == 1 else math.nan
    return across_seeds(per_seed["value"].to_numpy(), fallback)


def paired(a: pd.DataFrame, b: pd.DataFrame) -> Estimate:
    """a - b for tables (seed, value, sem) of two curves (seed_values): the mean over the seeds both
    have of the seed-matched difference, its SE across those seeds; with one common seed, the two
    runs' own standard errors combined (over their final windows)."""
    return estimate(seed_difference(a, b))


def paired_gap_steps(per_seed: pd.DataFrame, refs: dict[str, str]) -> pd.DataFrame:
    """(curve, step, gap, sem, n_seeds): per step, the seed-matched difference curve - reference
    (per_seed: at_chosen_lr's table), its mean over seeds and SE across them (NaN with one seed)."""
    rows = []
    for name, ref in refs.items():
        a = per_seed[per_seed["curve"] == name].pivot_table(index="step", columns="seed", values="value")
        b = per_seed[per_seed["curve"] == ref].pivot_table(index="step", columns="seed", values="value")
        seeds = a.columns.intersection(b.columns)
        g = (a[seeds] - b[seeds]).dropna()
        if len(g) and len(seeds):
            n = len(seeds)
            rows.append(pd.DataFrame({"curve": name, "step": g.index, "gap": g.mean(axis=1).to_numpy(),
                                      "sem": (g.std(axis=1, ddof=1) / math.sqrt(n)).to_numpy() if n > 1 else math.nan,
                                      "n_seeds": n}))
    cols = ["curve", "step", "gap", "sem", "n_seeds"]
    return pd.concat(rows, ignore_index=True)[cols] if rows else pd.DataFrame(columns=cols)


def window_gap(gaps: pd.DataFrame) -> Estimate:
    """The mean gap over a window: `gaps` is step x seed (rows: the window's steps, columns: seeds);
    each seed's mean over the window, then across seeds; one seed: the SE from the scatter of its
    per-step gaps within the window (scatter_se)."""
    means = gaps.mean(axis=0).to_numpy()
    fallback = scatter_se(gaps.iloc[:, 0]) if gaps.shape[1] == 1 else math.nan
    return across_seeds(means, fallback)


def seed_values(runs: pd.DataFrame, optimal: pd.DataFrame, value: str = "final_loss",
                sem: str | None = "final_loss_sem") -> pd.DataFrame:
    """(curve, seed, value, sem): each seed's `value` at its curve's best grid LR (optimal's grid_lr,
    chosen on the seed means), and that run's own standard error (`sem`, over its final window): what
    `paired` compares, seed by seed."""
    rows = []
    plotted = runs[runs["status"].isin(("completed", "diverged"))]
    plotted = plotted.assign(seed=seed_of(plotted))
    for _, o in optimal.iterrows():
        at = plotted[(plotted["curve"] == o["curve"]) & np.isclose(plotted["lr"], o["grid_lr"])]
        for seed, g in at.groupby("seed"):
            se = pd.to_numeric(g[sem], errors="coerce").mean() if sem and sem in g else math.nan
            rows.append({"curve": o["curve"], "seed": int(seed), "value": float(g[value].astype(float).mean()),
                         "sem": float(se) if pd.notna(se) else math.nan})
    return pd.DataFrame(rows, columns=["curve", "seed", "value", "sem"])
