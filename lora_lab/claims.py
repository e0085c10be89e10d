"""The claims C1..C9 (docs/design.md) and the rules that judge them: for each claim, the paper's
statement and number, the rule with its thresholds (the constants below, fixed before any data), and
a judge that reads the record of an experiment of the claim's kind (lora_lab/records.py) and returns
a Finding: the verdict, the noise floor the number was judged against, what was measured, and how.

    from lora_lab.claims import judge
    verdicts = judge(sections)     # {claim id: [Verdict, one per experiment of its kind]}

Verdicts: reproduced, not reproduced, inconclusive (the runs cannot decide: an optimum at an open
edge of the LR grid, a difference inside the noise, an LR chosen on the judged numbers), inconclusive
(single seed) (a comparison claim resting on one seed: the report says what the rule would say), not
run (no experiment of that kind among the results). The report that shows them is
lora_lab/report.py.

How a number is judged against the noise: every comparison is seed-matched (runs of one train.seed
see the same batches) and its noise floor is the standard error of the paired difference across
seeds (lora_lab/noise.py, Estimate); with one seed, the scatter within the run stands in, labelled
so, and the verdict of a comparison claim is at most "inconclusive (single seed)". Three kinds of
test, each with its constant:
- "A is worse than B" (C1's departure, C3, C4's attention-only): shown when the mean difference
  exceeds K_SE standard errors (and MIN_GAP); contradicted when even mean + K_SE SE is <= 0.
- "A is as good as B" (C4's MLP-only, C7): shown when mean + K_SE SE is within the margin;
  contradicted when mean - K_SE SE is beyond it.
- C5, non-inferiority on paired problems: the one-sided C5_Z lower bound of LoRA - FullFT must be
  above minus C5_MARGIN of FullFT's gain over the base model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np
import pandas as pd

from lora_lab.curves import FULL, SMOOTH, TOL_ABS, TOL_REL, margin
from lora_lab.flops import flops_ratio, paper_flops_ratio
from lora_lab.noise import (GAP_WINDOW, K_SE, MIN_GAP, MIN_WINDOW, SINGLE_SEED, Estimate, across_seeds, estimate, paired,
                            seed_difference)
from lora_lab.records import (BatchRecord, CapacityRecord, EarlyRecord, InvarianceRecord, LayersRecord, RankRecord,
                              RLRecord, Section)
from lora_lab.results import FINAL_WINDOW
from lora_lab.sections import EARLY, INVARIANCE_TOL, SHORT_RUN_STEPS, VALIDATION, capacity_bounds

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
SINGLE = "inconclusive (single seed)"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, SINGLE, NOT_RUN)

# The thresholds, fixed before the data (docs/analysis.md says why each has its value). The noise
# yardstick K_SE, C1's window GAP_WINDOW / MIN_WINDOW and MIN_GAP are defined in lora_lab/noise.py, and
# C4's margin TOL_REL / TOL_ABS in lora_lab/curves.py, where the departures that the figures mark use them too.
MIN_SEEDS = 2  # a comparison claim needs this many seed-matched replicates for a verdict
RATIO_TOL = 2.0  # C2: "about 10x" = within a factor 2 of the paper's ratio; ranks >= 4 within 2x of their median
C5_MARGIN = 0.25  # C5: LoRA may lose at most this fraction of FullFT's gain over the base model
C5_Z = 1.96  # C5: one-sided 97.5% lower bound, the usual level of a non-inferiority test
C6_RANGE = (0.6, 0.75)  # C6: "about 2/3" of FullFT's FLOPs per token
EARLY_REL = 0.1  # C7: early differences up to this fraction of the early loss drop count as coinciding
BITS_RANGE = (1.0, 4.0)  # C9: "about 2 bits per parameter" = within a factor 2 of 2
# C9's gate: a LoRA miss is read as capacity only where FullFT stored the facts, i.e. its re-ask loss is
# below its no-knowledge (held-out) loss by more than K_SE SE and by at least this fraction of it. The
# bounds credit a matching LoRA with all I bits; if FullFT recovered less than half of what the answers
# cost without knowledge, that credit would be off by more than BITS_RANGE's factor 2.
STORE_FRAC = 0.5
Z90 = 1.645  # a 90% two-sided interval is +-Z90 SE (C2's single-seed fallback reads the fit's 90% interval)


class Finding(NamedTuple):
    """What a rule returns: the verdict, the noise floor, the measured numbers, how they were computed."""

    verdict: str
    noise: str
    measured: str
    how: str


@dataclass
class Verdict:
    """One claim judged on one experiment; the fields in the order the report prints them."""

    claim: str
    experiment: str | None
    rule: str  # the rule's thresholds (Claim.thresholds)
    noise: str  # the noise floor the number was judged against
    measured: str
    verdict: str
    how: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    paper: str
    kinds: tuple[str, ...]
    rule: str  # the rule in full: when reproduced, not reproduced, inconclusive
    thresholds: str  # its thresholds in one line (the scorecard's rule column)
    judge: Callable[[Section], Finding]


R = TypeVar("R")


def record_of(s: Section, kind: type[R]) -> R:
    """The section's record, which must be of the type the rule was written for."""
    if not isinstance(s.record, kind):
        raise TypeError(f"{s.experiment}: expected a {kind.__name__}, got {type(s.record).__name__}")
    return s.record


def fmt(x: float | None, digits: int = 3) -> str:
    """A number to `digits` significant digits; n/a for None and NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.{digits}g}"


def tolerance_text() -> str:
    return f"{TOL_REL:.0%} of the reference loss (at least {TOL_ABS} nats)"


def noise_text(ests: list[Estimate], unit: str = " nats", names: list[str] | None = None) -> str:
    """The noise floors of several comparisons in one line (their source once, where shared)."""
    ests_ok = [(n, e) for n, e in zip(names or [""] * len(ests), ests) if e.n_seeds]
    if not ests_ok:
        return "n/a (nothing compared)"
    sources = sorted({e.source for _, e in ests_ok})
    parts = [f"{n + ' ' if n else ''}SE {fmt(e.se, 2)}{unit}" for n, e in ests_ok]
    return ", ".join(parts) + f" ({'; '.join(sources)})"


def seeded(n_seeds: int, f: Finding) -> Finding:
    """A comparison claim's finding capped for the seeds it rests on: with fewer than MIN_SEEDS, at
    most "inconclusive (single seed)", the measured text saying what the rule would have said."""
    if n_seeds >= MIN_SEEDS:
        return f
    if f.verdict in (REPRODUCED, NOT_REPRODUCED):
        return f._replace(verdict=SINGLE, measured=f"{f.measured}; on this one seed the rule would say: {f.verdict}")
    return f._replace(measured=f"{f.measured} (and one seed only)")


def worse(est: Estimate, k: float = K_SE) -> int:
    """"A is worse than B" for est = A - B (higher worse): +1 shown (beyond k SE and MIN_GAP), -1
    contradicted (even mean + k SE <= 0), 0 inside the noise."""
    if est.exceeds(k):
        return 1
    se = est.se if np.isfinite(est.se) else 0.0
    return -1 if np.isfinite(est.value) and est.value + k * se <= 0 else 0


def within(est: Estimate, limit: float, k: float = K_SE) -> int:
    """"A is as good as B" for est = A - B (higher worse) with a margin: +1 when mean + k SE <= limit,
    -1 when mean - k SE > limit, 0 in between."""
    se = est.se if np.isfinite(est.se) else 0.0
    if not np.isfinite(est.value):
        return 0
    if est.value + k * se <= limit:
        return 1
    return -1 if est.value - k * se > limit else 0


def three_way(outcomes: list[int]) -> str:
    """Every comparison shown: reproduced; any contradicted: not reproduced; otherwise inconclusive."""
    if outcomes and all(o == 1 for o in outcomes):
        return REPRODUCED
    return NOT_REPRODUCED if any(o == -1 for o in outcomes) else INCONCLUSIVE


# ----------------------------------------------------------------------------- C1, C2, C6


def judge_c1(s: Section) -> Finding:
    rec = record_of(s, RankRecord)
    dep = rec.departures
    how = (f"pointwise minimum over the LR grid of each rank's train loss, mean over seeds (smoothed by a trailing mean "
           f"over {SMOOTH:.0%} of the steps for the figure); per seed, the raw loss at the chosen LR minus FullFT's "
           f"(seed-matched: the same batches); the mean of that gap over a window of {GAP_WINDOW:.0%} of the steps "
           f"(at least {MIN_WINDOW}) is judged against its standard error across seeds; a rank departs at the end of the "
           "first window, sliding one step at a time, from which every later window exceeds the threshold.")
    if dep is None or not len(dep):
        return Finding(INCONCLUSIVE, "n/a", "no FullFT curve or no LoRA curve to compare", how)
    dep = dep.sort_values("rank")
    steps = rec.steps
    n = int(dep["n_seeds"].min())
    ests = [Estimate(g, se, int(k), src) for g, se, k, src in zip(dep["gap"], dep["gap_se"], dep["n_seeds"], dep["noise"])]
    noise = noise_text(ests, names=[f"r{int(r)}" for r in dep["rank"]])
    w0 = int(dep["window_from"].iloc[-1])
    parts = [f"r{int(r)} {g:+.3f} nats ({rg:+.1%}), {'departs from step ' + str(int(d)) if pd.notna(d) else 'does not depart'}"
             for r, g, rg, d in zip(dep["rank"], dep["gap"], dep["rel_gap"], dep["departs_at_step"])]
    measured = f"mean gap to FullFT over steps {w0}..{steps}: " + "; ".join(parts)
    top = dep.iloc[-1]
    at = dep["departs_at_step"].astype(float).fillna(steps + 1).to_numpy()  # never = after the last step
    if not pd.isna(top["departs_at_step"]):
        return seeded(n, Finding(NOT_REPRODUCED, noise, measured + " (the largest rank departs)", how))
    if not bool(np.all(np.diff(at) >= 0)):
        return seeded(n, Finding(INCONCLUSIVE, noise, measured + " (a higher rank departs before a lower one)", how))
    if dep["departs_at_step"].isna().all():
        measured += " (no rank ran out of capacity here)"
    return seeded(n, Finding(REPRODUCED, noise, measured, how))


def _main_curves(t: pd.DataFrame) -> pd.DataFrame:
    """The LoRA curves C2 reads: all layers where there are any, ranks >= 4 where there are any."""
    main = t[t["layers"] == "all"] if (t["layers"] == "all").any() else t
    return main[main["rank"] >= 4] if (main["rank"] >= 4).any() else main


def _ratio_noise(rec: RankRecord, band: pd.DataFrame) -> Estimate:
    """The SE of log10 of the median ratio: across seeds of each seed's own median, or with one seed
    from the fitted optima's 90% intervals (their median half-width / Z90)."""
    sr = rec.seed_ratios
    sr = sr[sr["curve"].isin(band["curve"])]
    per_seed = sr.groupby("seed")["ratio"].median()
    per_seed = per_seed[per_seed > 0]
    if len(per_seed) >= 2:
        return across_seeds(np.log10(per_seed.to_numpy()))
    half = (np.log10(band["ratio_high"].astype(float)) - np.log10(band["ratio_low"].astype(float))) / 2
    half = half[np.isfinite(half)]
    return Estimate(math.nan, float(half.median() / Z90) if len(half) else math.nan, 1,
                    f"{SINGLE_SEED} (the fits' 90% intervals)")


def judge_c2(s: Section) -> Finding:
    rec = record_of(s, RankRecord)
    ratios, steps = rec.ratios, rec.steps
    expected = 15.0 if steps <= SHORT_RUN_STEPS else 10.0
    how = ("optimal LR per curve: parabola in log LR through the best grid point and its neighbours, fitted on the seed "
           f"means of the final losses (mean train loss over the last {FINAL_WINDOW:.0%} of steps); ratio = LoRA optimum / "
           f"FullFT optimum; runs of {steps} steps, so the paper's number is ~{expected:g}x. Noise: the SE of log10 of the "
           "median ratio across seeds (each seed's runs fitted alone). Context: the ratio refitted on the losses at "
           "several steps of the constant-LR runs, and the analytic hidden / (2 alpha).")
    if not len(ratios):
        return Finding(INCONCLUSIVE, "n/a", "no FullFT or no LoRA optimum to compare", how)
    main = ratios[ratios["layers"] == "all"] if (ratios["layers"] == "all").any() else ratios
    main = main.sort_values("rank")
    band = _main_curves(main)
    names = [f"r{int(k)}" for k in main["rank"]] if main["rank"].is_unique else list(main["curve"])
    parts = [f"{n}: {fmt(v)}x" + (" (open)" if o else "") for n, v, o in zip(names, main["ratio"], main["open"])]
    med = float(band["ratio"].median())
    est = _ratio_noise(rec, band)
    f = 10 ** (K_SE * est.se) if np.isfinite(est.se) else math.inf
    noise = (f"1 SE of the median ratio: a factor {10 ** est.se:.3f} ({est.source})" if np.isfinite(est.se)
             else f"n/a ({est.source})")
    measured = "LoRA/FullFT optimal LR " + ", ".join(parts) + f"; median (rank >= 4) {fmt(med)}x"
    lrs = band["lora_lr"]
    spread = (lrs / lrs.median()).to_numpy()
    spread_ok = bool(((spread >= 1 / RATIO_TOL) & (spread <= RATIO_TOL)).all())
    measured += f"; rank >= 4 optima {'within' if spread_ok else 'not within'} {RATIO_TOL:g}x of their median"
    # context: the analytic prediction and the dependence on training length
    if rec.hidden and np.isfinite(rec.alpha):
        measured += f"; hidden/(2 alpha) = {rec.hidden}/(2*{rec.alpha:g}) = {fmt(rec.hidden / (2 * rec.alpha))}x"
    cuts = rec.ratio_by_steps
    if len(cuts):
        by = _main_curves(cuts).groupby(["step", "cut"], sort=True).agg(ratio=("ratio", "median"), open=("open", "any"))
        measured += "; median by length: " + ", ".join(f"{int(st)} steps {fmt(r['ratio'])}x" + (" (open)" if r["open"] else "")
                                                       for (st, _), r in by.iterrows())
    if band["open"].any():  # `open` covers FullFT's optimum too (curves.lr_ratios)
        return seeded(est.n_seeds, Finding(INCONCLUSIVE, noise, measured + " (an optimum at an open edge of the LR grid: "
                                           "the ratio is only bounded; extend the grid)", how))
    lo, hi = expected / RATIO_TOL, expected * RATIO_TOL
    if lo <= med <= hi and spread_ok and f <= RATIO_TOL:
        return seeded(est.n_seeds, Finding(REPRODUCED, noise, measured, how))
    if med * f < lo or med / f > hi or ((spread < 1 / (RATIO_TOL * f)) | (spread > RATIO_TOL * f)).any():
        return seeded(est.n_seeds, Finding(NOT_REPRODUCED, noise, measured, how))
    return seeded(est.n_seeds, Finding(INCONCLUSIVE, noise, measured + f" (inside the noise: {K_SE:g} SE is a factor "
                                       f"{fmt(f, 2)} against the {RATIO_TOL:g}x tolerance)", how))


def counted_flops_ratio(model: str, rank: int, seq_len: int | None, layers: str = "all",
                        unembed: bool = False) -> float | None:
    """LoRA/FullFT FLOPs per token from the harness's FLOPs counter (lora_lab.flops) for the adapters a
    run trains (its layer set, and the lm_head adapter if `unembed`), None where it cannot count the model."""
    try:
        return float(flops_ratio(model, rank=rank, layers=layers or "all", seq_len=int(seq_len or 2048), unembed=bool(unembed)))
    except Exception:  # noqa: BLE001 - an unknown model (offline hub id) is "not computed", not a crash
        return None


def judge_c6(s: Section) -> Finding:
    how = ("matmul FLOPs per token of a training step, LoRA over FullFT, counted by lora_lab.flops for the experiment's "
           "model and sequence length and for the adapters the runs trained (their lora.layers, and the lm_head adapter "
           "where lora.unembed); judged at the smallest rank run (the paper's ~2/3 assumes R << N). The paper's formula "
           "(2N^2 + 6NR) / 3N^2 at N = the hidden size is printed beside it; where even that formula is above the "
           f"range at the smallest rank run (R not << N), the claim does not apply: inconclusive. Measured time per "
           "step, printed beside "
           "the count, not judged: each arm's steps timed interleaved in one process (`lora-lab time-steps`) where "
           "the experiment has them, else the median over completed runs of their own step time.")
    rec = record_of(s, RankRecord)
    model, ad = rec.model, rec.adapters.sort_values("rank")
    noise = "none: FLOPs are counted, not measured"
    flops = {(int(r["rank"]), r["layers"], bool(r["unembed"])): counted_flops_ratio(model, int(r["rank"]), rec.seq_len,
                                                                                   r["layers"], bool(r["unembed"]))
             for _, r in ad.iterrows()}
    st = rec.step_time
    times, timing = {}, "per run"
    if st is not None and len(st):
        times = {c: v for c, v in zip(st["curve"], st["ratio_to_full"]) if np.isfinite(v)}
        timing = str(st["timing"].iloc[0]) if "timing" in st else timing
    if not rec.ranks or not flops or all(v is None for v in flops.values()):
        return Finding(INCONCLUSIVE, noise, f"FLOPs ratio not computed (lora_lab.flops could not count {model})", how)
    parts = []
    for (rank, layers, unembed), (_, a) in zip(flops, ad.iterrows()):
        t = times.get(a["curve"])
        parts.append(f"r{rank} ({layers}{' + lm_head' if unembed else ''}) {fmt(flops[(rank, layers, unembed)])}"
                     + (f", step time {t:.2f}" if t is not None else ""))
    measured = f"LoRA/FullFT FLOPs counted, step time measured ({timing}): " + "; ".join(parts)
    if rec.hidden:
        measured += (f"; paper's formula at N = {rec.hidden}: "
                     + ", ".join(f"r{r} {fmt(paper_flops_ratio(rec.hidden, r))}" for r in sorted({k[0] for k in flops})))
    smallest = flops[next(iter(flops))]
    if smallest is None:
        return Finding(INCONCLUSIVE, noise, measured, how)
    low_rank = next(iter(flops))[0]
    if rec.hidden and paper_flops_ratio(rec.hidden, low_rank) > C6_RANGE[1]:
        # The claim's premise, R << N: at this rank even the paper's own formula is above the range.
        return Finding(INCONCLUSIVE, noise, measured + f"; no run at a rank where the claim applies (the paper's "
                       f"formula is {fmt(paper_flops_ratio(rec.hidden, low_rank))} at the smallest, r{low_rank})", how)
    ok = C6_RANGE[0] <= smallest <= C6_RANGE[1]
    return Finding(REPRODUCED if ok else NOT_REPRODUCED, noise, measured, how)


# ----------------------------------------------------------------------------- C3, C4


def judge_c3(s: Section) -> Finding:
    rec = record_of(s, BatchRecord)
    pen, sv = rec.penalties, rec.seed_values
    how = ("best final train loss over the LR grid (chosen on the seed means) at the largest minus at the smallest batch "
           "size, per rank and FullFT (the batch-size penalty); per seed, LoRA's penalty minus FullFT's (seed-matched); "
           f"LoRA 'pays more' when the mean of that excess exceeds {K_SE:g} SE across seeds (and {MIN_GAP:g} nats), and "
           f"does not when even mean + {K_SE:g} SE <= 0.")
    if not len(pen) or not (pen["method"] == "full").any() or not (pen["method"] == "lora").any():
        return Finding(INCONCLUSIVE, "n/a", "needs LoRA and FullFT at two or more batch sizes", how)

    def penalty(r: pd.Series) -> pd.DataFrame:
        return seed_difference(sv[sv["curve"] == r["curve_large"]], sv[sv["curve"] == r["curve_small"]])

    full = pen[pen["method"] == "full"].iloc[0]
    lora = pen[pen["method"] == "lora"]
    ests = [paired(penalty(r), penalty(full)) for _, r in lora.iterrows()]
    noise = noise_text(ests, names=list(lora["family"]))
    measured = (f"penalty (batch {int(full['batch_small'])} -> {int(full['batch_large'])}): FullFT {full['penalty']:+.3f} nats, "
                + ", ".join(f"{f} {p:+.3f} (excess {e.value:+.3f})" for f, p, e in zip(lora["family"], lora["penalty"], ests)))
    n = min(e.n_seeds for e in ests)
    if pen["edge"].any():
        return seeded(n, Finding(INCONCLUSIVE, noise, measured + " (a best LR at an open edge of the grid: "
                                 f"{', '.join(pen.loc[pen['edge'], 'family'])})", how))
    return seeded(n, Finding(three_way([worse(e) for e in ests]), noise, measured, how))


def judge_c4(s: Section) -> Finding:
    rec = record_of(s, LayersRecord)
    t, sv = rec.layers, rec.seed_values
    how = ("best final train loss over the LR grid (chosen on the seed means) per layer set; attention-only is compared "
           "with the MLP-only curve whose trainable-parameter count is closest (within 2x), MLP-only with all layers at the "
           f"same rank, seed by seed. Attention-only is 'worse' when the mean difference exceeds {K_SE:g} SE (and "
           f"{MIN_GAP:g} nats); MLP-only is 'as good' when mean + {K_SE:g} SE of (MLP - all) is within {tolerance_text()}.")
    if t is None or not len(t):
        return Finding(INCONCLUSIVE, "n/a", "no layer-set runs", how)
    lora = t[t["method"] == "lora"]
    attn, mlp, alll = (lora[lora["layers"] == k] for k in ("attn", "mlp", "all"))
    if not len(attn) or not len(mlp):
        return Finding(INCONCLUSIVE, "n/a", "needs attention-only and MLP-only runs", how)

    def of(curve: str) -> pd.DataFrame:
        return sv[sv["curve"] == curve]

    outcomes, ests, names, notes, used = [], [], [], [], []
    for _, m in mlp.iterrows():
        ratio = attn["trainable_params"] / m["trainable_params"]
        close = attn[(ratio >= 0.5) & (ratio <= 2)]
        if len(close):
            a = close.iloc[int(np.argmin(np.abs(np.log(ratio[close.index]))))]
            e = paired(of(a["curve"]), of(m["curve"]))
            outcomes.append(worse(e))
            ests.append(e)
            names.append(f"attn r{a['rank']} - mlp r{m['rank']}")
            used += [a, m]
            notes.append(f"attn r{a['rank']} ({a['trainable_params']:,.0f} params) {a['best_final_loss']:.3f} vs "
                         f"mlp r{m['rank']} ({m['trainable_params']:,.0f}) {m['best_final_loss']:.3f} ({e.value:+.3f})")
    pairs = len(outcomes)
    for _, m in mlp.iterrows():
        al = alll[alll["rank"] == m["rank"]]
        if len(al):
            e = paired(of(m["curve"]), of(al["curve"].iloc[0]))
            outcomes.append(within(e, margin(al["best_final_loss"].iloc[0])))
            ests.append(e)
            names.append(f"mlp r{m['rank']} - all")
            used += [m, al.iloc[0]]
            notes.append(f"mlp r{m['rank']} {m['best_final_loss']:.3f} vs all r{m['rank']} {al['best_final_loss'].iloc[0]:.3f} "
                         f"({e.value:+.3f}, margin {margin(al['best_final_loss'].iloc[0]):.3f})")
    measured = "; ".join(notes) or "no comparable pairs"
    noise = noise_text(ests, names=names)
    n = min((e.n_seeds for e in ests), default=0)
    if not pairs:
        return seeded(n, Finding(INCONCLUSIVE, noise, measured + " (no attention-only run with a parameter count within 2x "
                                 "of an MLP-only one)", how))
    edges = sorted({u["curve"] for u in used if u["edge"]})
    if edges:
        return seeded(n, Finding(INCONCLUSIVE, noise, measured + f" (a best LR at an open edge of the grid: {', '.join(edges)})", how))
    return seeded(n, Finding(three_way(outcomes), noise, measured, how))


# ----------------------------------------------------------------------------- C5


def outcome_estimate(rows: pd.DataFrame) -> Estimate:
    """wins - losses (problems) of paired held-out outcomes, one row per seed: the mean over seeds and
    its SE, which adds the problem-level variance (McNemar's wins + losses: which problems flip) to
    the seed-to-seed one; one seed: McNemar's alone."""
    d = (rows["wins"] - rows["losses"]).to_numpy(dtype=float)
    flips = (rows["wins"] + rows["losses"]).to_numpy(dtype=float)
    n = len(d)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, "no data")
    if n == 1:
        return Estimate(float(d[0]), math.sqrt(flips[0]), 1, "single seed: problem-level (McNemar) only")
    return Estimate(float(d.mean()), math.sqrt((d.var(ddof=1) + flips.mean()) / n), n,
                    f"seed-to-seed and problem-level, {n} seeds")


def noninferior(est: Estimate, limit: float) -> int:
    """+1: the one-sided C5_Z lower bound of est is above -limit; -1: even the upper bound is below
    -limit; 0 in between."""
    se = est.se if np.isfinite(est.se) else 0.0
    if est.value - C5_Z * se > -limit:
        return 1
    return -1 if est.value + C5_Z * se < -limit else 0


def judge_c5(s: Section) -> Finding:
    rec = record_of(s, RLRecord)
    opt, metric = rec.optimal, rec.metric
    how = (f"each arm's LR chosen on {rec.selected_on} (the seed means); at it, the final {metric} compared with FullFT's "
           f"{'problem by problem on the same held-out problems, seed by seed' if rec.paired is not None else 'seed by seed'}. "
           f"Non-inferiority: a rank matches FullFT when the one-sided {C5_Z:g}-SE lower bound of (LoRA - FullFT) is above "
           f"minus {C5_MARGIN:.0%} of FullFT's gain over the base model (LoRA keeps at least {1 - C5_MARGIN:.0%} of what "
           f"FullFT gained); FullFT's gain must itself exceed {C5_Z:g} SE. The LR must be chosen on a validation split "
           "separate from the judged problems.")
    if not (opt["method"] == "full").any() or not (opt["method"] == "lora").any():
        return Finding(INCONCLUSIVE, "n/a", "needs LoRA and FullFT RL runs", how)
    full_row = opt[opt["method"] == "full"].iloc[0]
    lora = opt[opt["method"] == "lora"].sort_values("rank")
    base = rec.base
    ss = rec.seed_scores
    scores = {c: estimate(ss[ss["curve"] == c]) for c in opt["curve"]}  # each arm's judged score, mean over seeds

    def score(c: str) -> str:
        e = scores[c]
        return f"{e.value:.3f}" + (f" +- {e.se:.3f}" if e.n_seeds > 1 else "")

    if rec.paired is not None:
        p = rec.paired
        gain = outcome_estimate(p[p["versus"] == "base"])
        problems = int(p["problems"].iloc[0])
        ests = [outcome_estimate(p[(p["versus"] == FULL) & (p["curve"] == c)]) for c in lora["curve"]]
        unit = " problems"
        parts = [f"{metric}: FullFT {score(full_row['curve'])} vs base model {base:.3f} ({gain.value:+.1f} of {problems} problems)"]
        parts += [f"r{int(r)} {score(c)} (vs FullFT {e.value:+.1f} problems)" for r, c, e in zip(lora["rank"], lora["curve"], ests)]
    else:
        full_scores = ss[ss["curve"] == full_row["curve"]]
        fs = full_scores.assign(value=full_scores["value"] - base)
        gain = estimate(fs) if np.isfinite(base) and len(fs) else Estimate(math.nan, math.nan, 0, "no base score")
        ests = [paired(ss[ss["curve"] == c], full_scores) for c in lora["curve"]]
        unit = ""
        parts = [f"{metric}: FullFT {score(full_row['curve'])}" + (f" vs base {base:.3f}" if np.isfinite(base) else "")]
        parts += [f"r{int(r)} {score(c)} ({e.value:+.3f})" for r, c, e in zip(lora["rank"], lora["curve"], ests)]
    limit = C5_MARGIN * gain.value
    noise = noise_text(ests, unit=unit, names=[f"r{int(r)}" for r in lora["rank"]]) + f"; FullFT's gain SE {fmt(gain.se, 2)}{unit}"
    measured = "; ".join(parts) + f"; margin {fmt(limit, 3)}{unit} ({C5_MARGIN:.0%} of FullFT's gain); LR chosen on {rec.selected_on}"
    n = min([gain.n_seeds] + [e.n_seeds for e in ests])
    edges = opt.loc[opt["edge"], "curve"].tolist()
    if not np.isfinite(gain.value) or gain.value - C5_Z * (gain.se if np.isfinite(gain.se) else 0) <= 0:
        return seeded(n, Finding(INCONCLUSIVE, noise, measured + " (FullFT did not beat the base model beyond the noise: "
                                 "nothing to match)", how))
    if edges:
        return seeded(n, Finding(INCONCLUSIVE, noise, measured + f" (best LR at an open edge of the grid for {', '.join(edges)}: "
                                 "a better LR may lie outside it)", how))
    verdict = three_way([noninferior(e, limit) for e in ests])
    f = seeded(n, Finding(verdict, noise, measured, how))
    if f.verdict in (REPRODUCED, NOT_REPRODUCED) and rec.selected_on != VALIDATION:
        return f._replace(verdict=INCONCLUSIVE, measured=f"{f.measured} (the rule would say {verdict}, but the LRs were "
                          f"chosen on the numbers judged: log a validation split)")
    return f


# ----------------------------------------------------------------------------- C7, C8, C9


def judge_c7(s: Section) -> Finding:
    # a rank experiment carries C7's early curves from its own LR grid (sections.early_curves)
    rec = s.record.early if isinstance(s.record, RankRecord) else record_of(s, EarlyRecord)
    d, window = rec.diffs, rec.window
    has_lr = np.isfinite(rec.lr)
    how = ("train loss of each rank at one LR (" + (f"lr {rec.lr:g}: {rec.chosen}" if has_lr else "none here") + "), "
           f"unsmoothed, per seed; over the first {EARLY:.0%} of steps (here {window}), the largest |difference| to the "
           f"largest rank of the same seed, relative to how much the loss fell over those steps; curves 'coincide' when "
           f"mean + {K_SE:g} SE across seeds is at most {EARLY_REL:.0%}, and do not when mean - {K_SE:g} SE exceeds it.")
    if not has_lr:
        return Finding(INCONCLUSIVE, "n/a", f"no LR to compare the ranks at: {rec.chosen}", how)
    if not len(d):
        return Finding(INCONCLUSIVE, "n/a", f"needs two or more ranks at one LR (lr {rec.lr:g})", how)
    ests = [Estimate(v, se, int(k), src) for v, se, k, src in zip(d["early_rel_diff"], d["early_rel_se"], d["n_seeds"], d["noise"])]
    noise = noise_text(ests, unit=" of the drop", names=list(d["curve"]))
    parts = [f"{c}: {fmt(v, 2)} ({a:.3f} nats)" for c, v, a in zip(d["curve"], d["early_rel_diff"], d["early_max_abs_diff"])]
    measured = f"at lr {rec.lr:g}, early |diff| to {d['reference'].iloc[0]} / loss drop: " + ", ".join(parts)
    pair = rec.pair
    if pair and pair[0] in set(d["curve"]):
        fd = float(d.set_index("curve").loc[pair[0], "final_diff"])
        measured += f"; {pair[0]} minus {pair[1]} at the end: {fd:+.3f} nats"
    n = min(e.n_seeds for e in ests)
    return seeded(n, Finding(three_way([within(e, EARLY_REL) for e in ests]), noise, measured, how))


def judge_c8(s: Section) -> Finding:
    rec = record_of(s, InvarianceRecord)
    t = rec.table
    how = ("runs grouped into classes by everything but (alpha, init_A, LR_A, LR_B), and by the two invariants s/eta_A and "
           "alpha*eta_A*eta_B of the map (alpha/(pq), p*init_A, p*LR_A, q*LR_B); within a class, the largest |difference| of "
           f"the train-loss trajectories to the class's reference run; 'identical' = at most {INVARIANCE_TOL:g} nats.")
    noise = "none: runs of one class share the seed and are deterministic (float32 rounding ~1e-6 nats)"
    if not len(t):
        return Finding(INCONCLUSIVE, noise, "no completed LoRA runs", how)
    multi = t[t.groupby("class")["class"].transform("size") > 1]
    others = multi[multi["variant"] != multi["reference"]]
    if not len(others):
        return Finding(INCONCLUSIVE, noise, "no class has two equivalent variants", how)
    worst = float(others["max_abs_diff"].max())
    measured = (f"largest within-class difference {worst:.2g} nats over {int(others['steps'].max())} steps "
                f"({len(others)} variants against their class's reference, "
                f"{multi['class'].nunique()} class{'es' if multi['class'].nunique() != 1 else ''})")
    between = rec.between
    if between is not None and np.isfinite(between):
        noise += f"; for scale, the smallest difference between classes is {between:.2g} nats"
        measured += f"; smallest difference between classes {between:.2g} nats"
    eps = set(others["adam_eps"].astype(float))
    if eps != {0.0}:
        measured += f" (Adam eps {sorted(eps)}: the invariance is exact only at eps = 0)"
    return Finding(REPRODUCED if worst <= INVARIANCE_TOL else NOT_REPRODUCED, noise, measured, how)


def _stored(g: pd.Series) -> bool:
    """C9's gate at one data size (a row of sections.storage_gate): FullFT's held-out minus re-ask
    loss exceeds K_SE SE (and MIN_GAP) and is at least STORE_FRAC of the held-out loss."""
    est = Estimate(float(g["stored"]), float(g["stored_se"]), int(g["n_seeds"]), str(g["noise"]))
    return bool(est.exceeds(K_SE) and g["stored"] >= STORE_FRAC * g["baseline_loss"])


def _gate_text(g: pd.Series) -> str:
    if not np.isfinite(g["full_lr"]):
        return (f"N={g['num_examples']:g}: no eval on unseen facts at any of FullFT's LRs (FullFT runs with "
                f"data.eval_unseen=true, or a baseline arm on tiny-facts-heldout)")
    if not np.isfinite(g["stored"]):
        return f"N={g['num_examples']:g}: no finite loss at LR {g['full_lr']:g} (re-ask {fmt(g['full_loss'])}, held-out " \
               f"{fmt(g['baseline_loss'])})"
    arm = f"; held-out loss: {g['source']}" if "baseline arm" in str(g.get("source", "")) else ""
    return (f"N={g['num_examples']:g}, LR {g['full_lr']:g}: re-ask {fmt(g['full_loss'])} vs held-out {fmt(g['baseline_loss'])} nats "
            f"(stored {fmt(g['stored'])} +- {fmt(g['stored_se'], 2)}, {g['stored_frac']:.0%} of the held-out loss{arm})")


def judge_c9(s: Section) -> Finding:
    """C9's rule (_judge_c9), capped for the seeds its LoRA-vs-FullFT gaps rest on."""
    pts = record_of(s, CapacityRecord).points
    seeds = pd.to_numeric(pts["n_seeds"], errors="coerce").dropna() if len(pts) and "n_seeds" in pts else None
    return seeded(int(seeds.min()) if seeds is not None and len(seeds) else MIN_SEEDS, _judge_c9(s))


def _judge_c9(s: Section) -> Finding:
    rec = record_of(s, CapacityRecord)
    pts, b, gate = rec.points, rec.bounds, rec.gate
    how = ("tiny-facts sets of known information content I (bits); at each size, the best LR's final eval loss of each "
           "LoRA size (P parameters) against FullFT's, seed by seed; a LoRA 'matches' when its gap does not exceed "
           f"{K_SE:g} SE (and {MIN_GAP:g} nats). Gate: at every size FullFT must have stored the facts, i.e. its eval "
           "loss on re-asked training facts is below the no-knowledge loss (the same FullFT run's eval loss on unseen "
           "facts, data.eval_unseen=true; in run roots made before it, a baseline arm's FullFT run on the same facts at "
           "the same LR and seed, data.name=tiny-facts-heldout), paired seed by seed at FullFT's best LR among those "
           f"that measured it, by more than {K_SE:g} SE and by at least {STORE_FRAC:.0%} of it; else no miss "
           "can be read as capacity. The eval loss averages over every answer token (name and template too), so "
           "the gate shows storage without measuring it in bits (experiments/facts_recall.py does). A matching LoRA "
           f"bounds the capacity from below (c >= I/P), a failing smaller one from above (c < I/P); 'about 2 bits per "
           f"parameter' = the bounds allow {BITS_RANGE[0]:g}..{BITS_RANGE[1]:g}. The ~1 bit per token (SL) and per "
           "episode (RL) statements are not measured.")
    if not len(pts) or pts["matches_full"].isna().all():
        return Finding(INCONCLUSIVE, "n/a", "needs LoRA and FullFT runs on tiny-facts", how)
    ok = pts[pts["matches_full"].notna()]
    ests = [Estimate(g, se, int(k), src) for g, se, k, src in zip(ok["gap"], ok["gap_se"], ok["n_seeds"], ok["noise"])]
    ses = [e.se for e in ests if np.isfinite(e.se)]
    noise = (f"SE of the gap to FullFT {fmt(min(ses), 2)}..{fmt(max(ses), 2)} nats" if ses else "SE n/a") \
        + f" ({'; '.join(sorted({e.source for e in ests}))})"
    lo, hi = b.get("low", math.nan), b.get("high", math.nan)
    n_match = int((pts["matches_full"] == True).sum())  # noqa: E712 - a column of True/False/None
    measured = (f"bits per parameter in [{fmt(lo)}, {fmt(hi)}) (NaN: unbounded); {n_match} of {len(pts)} LoRA sizes match "
                f"FullFT; predicted (I <= 2P) and observed agree for "
                f"{int((pts['predicted_fits'] == pts['matches_full']).sum())} of {len(pts)}")
    # the gate, at every size a LoRA was compared at (each such size has a FullFT curve, hence a gate row)
    at = gate[gate["num_examples"].isin(set(ok["num_examples"]))]
    stored_se = [x for x in at["stored_se"] if np.isfinite(x)]
    if stored_se:
        span = {fmt(min(stored_se), 2), fmt(max(stored_se), 2)}
        noise += f"; SE of FullFT's stored gap {'..'.join(sorted(span, key=float))} nats"
    failed = [g for _, g in at.iterrows() if not _stored(g)]
    if failed:
        return Finding(INCONCLUSIVE, noise, "FullFT did not store the facts: " + "; ".join(_gate_text(g) for g in failed)
                       + f" (the gate needs its held-out minus re-ask loss > {K_SE:g} SE and >= {STORE_FRAC:.0%} of the "
                       f"held-out loss), so no LoRA miss is read as capacity; not judged: {measured}", how)
    measured += "; FullFT stored the facts: " + "; ".join(_gate_text(g) for _, g in at.iterrows())
    if pts["edge"].any():
        # the bounds without the points whose best LR is only bounded: still shown, not judged
        rest = capacity_bounds(pts[~pts["edge"].astype(bool)])
        return Finding(INCONCLUSIVE, noise, measured + f" (a best LR at an open edge of the grid for {int(pts['edge'].sum())} "
                       f"points; without them [{fmt(rest['low'])}, {fmt(rest['high'])}))", how)
    if np.isfinite(lo) and np.isfinite(hi):
        if lo > hi:
            return Finding(INCONCLUSIVE, noise, measured + " (bounds cross: noise or a non-monotone size effect)", how)
        ok_range = lo <= BITS_RANGE[1] and hi >= BITS_RANGE[0]
        return Finding(REPRODUCED if ok_range else NOT_REPRODUCED, noise, measured, how)
    if np.isfinite(lo) and lo > BITS_RANGE[1]:
        return Finding(NOT_REPRODUCED, noise, measured, how)
    if np.isfinite(hi) and hi < BITS_RANGE[0]:
        return Finding(NOT_REPRODUCED, noise, measured, how)
    return Finding(INCONCLUSIVE, noise, measured + " (only one bound: the sizes do not bracket the capacity)", how)


# ----------------------------------------------------------------------------- the table of claims

_SEEDS = f"at least {MIN_SEEDS} seeds, else at most '{SINGLE}'"
_EDGE = "an optimum at an open edge of the LR grid: inconclusive"
_EARLY_LR = ("among the grid LRs run at every LoRA rank with every seed, the one nearest in log10 to the median (in "
             "log10) of the ranks' optimal LRs fitted on the seed means (ties: the lower LR)")

CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "High-rank LoRA and FullFT have the same learning curve; low ranks leave the min-loss curve when the "
          "adapter's capacity runs out.", "high ranks on the FullFT curve throughout; low ranks depart late in training",
          ("rank",),
          f"a rank departs FullFT when its mean seed-matched gap over the last {GAP_WINDOW:.0%} of the steps (at least "
          f"{MIN_WINDOW}) exceeds {K_SE:g} standard errors across seeds (and {MIN_GAP:g} nats). Reproduced: the largest "
          "rank does not depart and no rank departs before a smaller one; not reproduced: the largest rank departs; "
          f"inconclusive: ranks depart out of order, or no FullFT/LoRA curve. {_SEEDS}.",
          f"gap over last {GAP_WINDOW:.0%} of steps > {K_SE:g} SE (> {MIN_GAP:g} nats) = departs; {_SEEDS}", judge_c1),
    Claim("C2", "The optimal LoRA LR is about 10x FullFT's, nearly independent of rank; about 15x for runs of 100 "
          "steps or fewer.", "10x (fit 9.8x); ranks 4..512 within 2x; ~15x at <= 100 steps", ("rank",),
          f"reproduced: the median LoRA/FullFT ratio of the optima (fitted on seed means) over ranks >= 4 is within "
          f"{RATIO_TOL:g}x of the paper's number for the runs' length (10x, or 15x at <= {SHORT_RUN_STEPS} steps), those "
          f"ranks' optima are within {RATIO_TOL:g}x of their median, and {K_SE:g} SE of the median (across seeds) is "
          f"a factor of at most {RATIO_TOL:g}; not reproduced: the median, or a rank's optimum, is outside its band by "
          f"more than {K_SE:g} SE; inconclusive otherwise, and for {_EDGE.split(':')[0]}. {_SEEDS}.",
          f"median ratio within {RATIO_TOL:g}x of 10x (15x at <= {SHORT_RUN_STEPS} steps), judged with {K_SE:g} SE; "
          f"{_EDGE}; {_SEEDS}", judge_c2),
    Claim("C3", "LoRA pays more than FullFT for large batches, independent of rank.",
          "LoRA's loss grows more with batch size than FullFT's, at every rank", ("batch",),
          f"reproduced: at every rank, LoRA's batch-size penalty exceeds FullFT's (seed-matched) by more than {K_SE:g} "
          f"SE (and {MIN_GAP:g} nats); not reproduced: at some rank even the excess + {K_SE:g} SE is <= 0; "
          f"inconclusive otherwise, and for {_EDGE.split(':')[0]}. {_SEEDS}.",
          f"excess penalty > {K_SE:g} SE at every rank; {_EDGE}; {_SEEDS}", judge_c3),
    Claim("C4", "Attention-only LoRA is worse than MLP-only, even at matched parameter count; MLP-only is about as "
          "good as all layers.", "attention-only clearly worse; MLP-only ~ all layers", ("layers",),
          f"reproduced: in every matched-parameter pair attention-only is worse than MLP-only by more than {K_SE:g} SE "
          f"(and {MIN_GAP:g} nats), and at each rank MLP-only minus all layers + {K_SE:g} SE is within {tolerance_text()}; "
          f"not reproduced: a comparison contradicted beyond {K_SE:g} SE; inconclusive otherwise, with no matched pair, "
          f"and for {_EDGE.split(':')[0]}. {_SEEDS}.",
          f"attn - mlp > {K_SE:g} SE; mlp - all + {K_SE:g} SE <= {TOL_REL:.0%}; {_EDGE}; {_SEEDS}", judge_c4),
    Claim("C5", "In RL (policy gradient), even rank-1 LoRA matches FullFT.", "rank 1 reaches FullFT's reward",
          ("rl",),
          f"each arm's LR chosen on a validation split, judged on the held-out test problems, paired problem by problem "
          f"and seed by seed. Reproduced: FullFT beats the base model by more than {C5_Z:g} SE and every rank is "
          f"non-inferior: the one-sided {C5_Z:g}-SE lower bound of LoRA - FullFT is above minus {C5_MARGIN:.0%} of "
          f"FullFT's gain; not reproduced: for some rank even the upper bound is below that margin; inconclusive "
          f"otherwise, for {_EDGE.split(':')[0]}, and whenever the LRs were chosen on the test problems. {_SEEDS}.",
          f"lower {C5_Z:g}-SE bound of LoRA - FullFT > -{C5_MARGIN:.0%} of FullFT's gain; LR chosen on validation; "
          f"{_EDGE}; {_SEEDS}", judge_c5),
    Claim("C6", "LoRA costs about 2/3 of FullFT's FLOPs per step: (2N^2 + 6NR) / 3N^2.",
          "~2/3 of FullFT's FLOPs per step", ("rank",),
          f"reproduced: the counted LoRA/FullFT FLOPs ratio for the runs' own adapters (layer set, lm_head adapter) at "
          f"the smallest rank run is in [{C6_RANGE[0]:g}, {C6_RANGE[1]:g}]; inconclusive: not computed, or no rank "
          f"small enough for the claim (the paper's formula above {C6_RANGE[1]:g} at the smallest); not reproduced "
          "otherwise. The measured step-time ratio is printed beside it, not judged (it depends on the machine).",
          f"counted FLOPs ratio in [{C6_RANGE[0]:g}, {C6_RANGE[1]:g}] at the smallest rank; step time shown", judge_c6),
    Claim("C7", "With the alpha/r scaling, curves for different ranks coincide early in training.",
          "early curves of ranks 1..512 at one LR nearly identical", ("rank", "early_rank"),
          f"the ranks are compared at one LR, chosen before their curves are: {_EARLY_LR}. Reproduced: over the early "
          f"steps every rank's largest difference to the largest rank, + {K_SE:g} SE across seeds, is within "
          f"{EARLY_REL:.0%} of the early loss drop; not reproduced: for some rank, minus {K_SE:g} SE, it is beyond; "
          f"inconclusive otherwise, with fewer than two ranks, or with no LR run at every rank with every seed. {_SEEDS}.",
          f"one LR: the shared grid LR nearest the ranks' median optimum; early |diff| / drop + {K_SE:g} SE <= "
          f"{EARLY_REL:.0%}; {_SEEDS}", judge_c7),
    Claim("C8", "(alpha, init_A, LR_A, LR_B) has only two effective degrees of freedom under Adam (eps = 0).",
          "identical trajectories under (alpha/(pq), p*init_A, p*LR_A, q*LR_B)", ("invariance",),
          f"reproduced: every equivalent variant's trajectory is within {INVARIANCE_TOL:g} nats of its class reference; "
          "not reproduced otherwise; inconclusive: no class with two variants.",
          f"within-class difference <= {INVARIANCE_TOL:g} nats", judge_c8),
    Claim("C9", "LoRA matches FullFT while it is not capacity-bound; about 2 bits per parameter.",
          "~2 bits per parameter; SL ~1 bit per token, RL ~1 bit per episode", ("capacity",),
          f"gate first: at every data size FullFT must have stored the facts, its eval loss on the re-asked training "
          f"facts (at its best LR among those that measured it) below the no-knowledge loss (the same FullFT run's "
          f"eval loss on unseen facts, data.eval_unseen=true; older run roots: a baseline arm on tiny-facts-heldout) by more "
          f"than {K_SE:g} SE (and {MIN_GAP:g} "
          f"nats) and by at least {STORE_FRAC:.0%} of that loss; otherwise inconclusive (FullFT did not store the "
          f"facts, so no LoRA miss is read as capacity). A LoRA size matches FullFT when its gap does not exceed "
          f"{K_SE:g} SE (and {MIN_GAP:g} nats). Reproduced: the capacity bounds from matching and failing LoRA sizes "
          f"allow {BITS_RANGE[0]:g}..{BITS_RANGE[1]:g} bits per parameter; not reproduced: they exclude it; "
          f"inconclusive: they do not bracket it, or {_EDGE.split(':')[0]}. {_SEEDS}.",
          f"gate: FullFT's held-out minus re-ask loss > {K_SE:g} SE and >= {STORE_FRAC:.0%} of held-out; match = gap "
          f"<= {K_SE:g} SE; bounds allow {BITS_RANGE[0]:g}..{BITS_RANGE[1]:g} bits/param; {_EDGE}; {_SEEDS}", judge_c9),
)


def judge(sections: list[Section]) -> dict[str, list[Verdict]]:
    """Verdicts per claim, one per experiment of the claim's kind ("not run" when there is none)."""
    out: dict[str, list[Verdict]] = {}
    for c in CLAIMS:
        vs = []
        for s in sections:
            if s.kind not in c.kinds:
                continue
            if s.error:
                vs.append(Verdict(c.id, s.experiment, c.thresholds, "n/a",
                                  f"the analysis of this experiment failed: {s.error}", INCONCLUSIVE))
                continue
            if s.record is None:
                vs.append(Verdict(c.id, s.experiment, c.thresholds, "n/a",
                                  "; ".join(s.notes) or "no completed or diverged runs", NOT_RUN))
                continue
            f = c.judge(s)
            vs.append(Verdict(c.id, s.experiment, c.thresholds, f.noise, f.measured, f.verdict, f.how))
        if not vs:
            vs.append(Verdict(c.id, None, c.thresholds, "n/a", f"no experiment of kind {'/'.join(c.kinds)} among the "
                                                               f"results (e.g. lora-lab sweep tiny/{c.kinds[0]})", NOT_RUN))
        out[c.id] = vs
    return out
