"""The claims C1..C9 (docs/design.md) and the rules that judge them: for each claim, the paper's
statement and number, and a judge that reads the record of an experiment of the claim's kind
(lora_lab/records.py) and returns (verdict, what was measured, how it was computed).

    from lora_lab.claims import judge
    verdicts = judge(sections)     # {claim id: [Verdict, one per experiment of its kind]}

Verdicts: reproduced, not reproduced, inconclusive (the runs cannot decide, e.g. an optimum at the
edge of the LR grid), not run (no experiment of that kind among the results). The report that shows
them is lora_lab/report.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd

from lora_lab.curves import SMOOTH, TOL_ABS, TOL_REL, matches
from lora_lab.flops import flops_ratio
from lora_lab.records import (BatchRecord, CapacityRecord, EarlyRecord, InvarianceRecord, LayersRecord, RankRecord,
                              RLRecord, Section)
from lora_lab.results import FINAL_WINDOW
from lora_lab.sections import EARLY, INVARIANCE_TOL, SHORT_RUN_STEPS

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN = "reproduced", "not reproduced", "inconclusive", "not run"
EARLY_REL = 0.1  # C7: early differences up to this fraction of the early loss drop count as coinciding
BITS_RANGE = (1.0, 4.0)  # C9: "about 2 bits per parameter" = within a factor 2 of 2
C5_Z = 2.0  # C5: paired held-out comparisons count beyond |z| = 2 (McNemar, normal form)


@dataclass
class Verdict:
    claim: str
    experiment: str | None
    verdict: str
    measured: str
    how: str = ""


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    paper: str
    kinds: tuple[str, ...]
    rule: str
    judge: Callable[[Section], tuple[str, str, str]]  # -> (verdict, measured, how)


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


# ----------------------------------------------------------------------------- the rules


def judge_c1(s: Section) -> tuple[str, str, str]:
    rec = record_of(s, RankRecord)
    dep = rec.departures
    how = (f"pointwise minimum over the LR grid of each rank's smoothed train loss (trailing mean over {SMOOTH:.0%} of the "
           f"steps); a rank 'leaves' FullFT at the first step from which it stays more than {tolerance_text()} above it.")
    if dep is None or not len(dep):
        return INCONCLUSIVE, "no FullFT curve or no LoRA curve to compare", how
    dep = dep.sort_values("rank")
    steps = rec.steps
    parts = [f"{c}: {'never' if pd.isna(d) else f'step {int(d)}'}" for c, d in zip(dep["curve"], dep["departs_at_step"])]
    top = dep.iloc[-1]
    measured = f"leaves FullFT at ({steps} steps): " + ", ".join(parts) + f"; largest rank's final gap {top['final_rel_gap']:+.1%}"
    at = dep["departs_at_step"].astype(float).fillna(steps + 1).to_numpy()  # never = after the last step
    if not pd.isna(top["departs_at_step"]):
        return NOT_REPRODUCED, measured, how
    ordered = bool(np.all(np.diff(at) >= 0))
    if not ordered:
        return INCONCLUSIVE, measured + " (a higher rank left before a lower one)", how
    if dep["departs_at_step"].isna().all():
        measured += " (no rank ran out of capacity here)"
    return REPRODUCED, measured, how


def judge_c2(s: Section) -> tuple[str, str, str]:
    rec = record_of(s, RankRecord)
    ratios, short, steps = rec.ratios, rec.short_ratios, rec.steps
    expected = 15.0 if steps <= SHORT_RUN_STEPS else 10.0
    how = ("optimal LR per curve: parabola in log LR through the best grid point and its neighbours (90% interval from "
           f"the final losses' standard errors); final loss = mean train loss over the last {FINAL_WINDOW:.0%} of steps; "
           f"ratio = LoRA optimum / FullFT optimum; runs of {steps} steps, so the paper's number is ~{expected:g}x.")
    if not len(ratios):
        return INCONCLUSIVE, "no FullFT or no LoRA optimum to compare", how
    r = ratios.sort_values("rank")
    main = r[r["layers"] == "all"] if (r["layers"] == "all").any() else r
    names = [f"r{int(k)}" for k in main["rank"]] if main["rank"].is_unique else list(main["curve"])
    parts = [f"{n}: {fmt(v)}x" + (" (open)" if o else "") for n, v, o in zip(names, main["ratio"], main["open"])]
    band = main[main["rank"] >= 4] if (main["rank"] >= 4).any() else main
    med = float(band["ratio"].median())
    measured = "LoRA/FullFT optimal LR " + ", ".join(parts) + f"; median (rank >= 4) {fmt(med)}x"
    if short is not None and len(short):
        measured += f"; at step {SHORT_RUN_STEPS}: median {fmt(float(short['ratio'].median()))}x"
    lrs = band["lora_lr"]
    spread_ok = bool(((lrs / lrs.median()).between(0.5, 2.0)).all())
    measured += f"; rank >= 4 optima {'within' if spread_ok else 'not within'} 2x of their median"
    if band["open"].any():
        return INCONCLUSIVE, measured + " (an optimum at the edge of the LR grid: the ratio is only bounded)", how
    ok = expected / 2 <= med <= expected * 2 and spread_ok
    return (REPRODUCED if ok else NOT_REPRODUCED), measured, how


def judge_c3(s: Section) -> tuple[str, str, str]:
    pen = record_of(s, BatchRecord).penalties
    how = ("best final train loss over the LR grid at the largest minus at the smallest batch size, per rank and FullFT "
           f"(the batch-size penalty); LoRA 'pays more' when its penalty exceeds FullFT's by more than {tolerance_text()}.")
    if not len(pen) or not (pen["method"] == "full").any() or not (pen["method"] == "lora").any():
        return INCONCLUSIVE, "needs LoRA and FullFT at two or more batch sizes", how
    full = pen[pen["method"] == "full"].iloc[0]
    tol = max(TOL_REL * abs(full["loss_large"]), TOL_ABS)
    lora = pen[pen["method"] == "lora"]
    more = lora["penalty"] - full["penalty"] > tol
    measured = (f"penalty (batch {int(full['batch_small'])} -> {int(full['batch_large'])}): FullFT {full['penalty']:+.3f} nats, "
                + ", ".join(f"{f} {p:+.3f}" for f, p in zip(lora["family"], lora["penalty"])))
    if more.all():
        return REPRODUCED, measured, how
    return (NOT_REPRODUCED if not more.any() else INCONCLUSIVE), measured, how


def judge_c4(s: Section) -> tuple[str, str, str]:
    t = record_of(s, LayersRecord).layers
    how = ("best final train loss over the LR grid per layer set; attention-only is compared with the MLP-only curve whose "
           f"trainable-parameter count is closest (within 2x), MLP-only with all layers at the same rank; 'as good' = {tolerance_text()}.")
    if t is None:
        return INCONCLUSIVE, "no layer-set runs", how
    lora = t[t["method"] == "lora"]
    attn, mlp, alll = (lora[lora["layers"] == k] for k in ("attn", "mlp", "all"))
    if not len(attn) or not len(mlp):
        return INCONCLUSIVE, "needs attention-only and MLP-only runs", how
    pairs, notes = [], []
    for _, m in mlp.iterrows():
        ratio = attn["trainable_params"] / m["trainable_params"]
        close = attn[(ratio >= 0.5) & (ratio <= 2)]
        if len(close):
            a = close.iloc[int(np.argmin(np.abs(np.log(ratio[close.index]))))]
            worse = not matches(a["best_final_loss"], m["best_final_loss"])
            pairs.append(worse)
            notes.append(f"attn r{a['rank']} ({a['trainable_params']:,.0f} params) {a['best_final_loss']:.3f} vs "
                         f"mlp r{m['rank']} ({m['trainable_params']:,.0f}) {m['best_final_loss']:.3f}")
    same = []
    for _, m in mlp.iterrows():
        al = alll[alll["rank"] == m["rank"]]
        if len(al):
            same.append(matches(m["best_final_loss"], al["best_final_loss"].iloc[0]))
            notes.append(f"mlp r{m['rank']} {m['best_final_loss']:.3f} vs all r{m['rank']} {al['best_final_loss'].iloc[0]:.3f}")
    measured = "; ".join(notes) or "no comparable pairs"
    if not pairs:
        return INCONCLUSIVE, measured + " (no attention-only run with a parameter count within 2x of an MLP-only one)", how
    if all(pairs) and all(same):
        return REPRODUCED, measured, how
    return NOT_REPRODUCED, measured, how


def judge_c5(s: Section) -> tuple[str, str, str]:
    rec = record_of(s, RLRecord)
    opt, metric, paired = rec.optimal, rec.metric, rec.paired
    if paired:
        return _judge_c5_paired(rec, paired)
    how = (f"best {metric} over the LR grid per rank and FullFT; a rank 'matches' when it is at most two standard errors "
           "of a difference of two accuracies below FullFT (or 0.02 for a reward); FullFT must beat the base model by as much.")
    if not (opt["method"] == "full").any() or not (opt["method"] == "lora").any():
        return INCONCLUSIVE, "needs LoRA and FullFT RL runs", how
    full = float(opt.loc[opt["method"] == "full", "best_score"].iloc[0])
    n = rec.eval_size
    if rec.uses_accuracy and n and np.isfinite(n):
        p = min(max(full, 0.05), 0.95)
        tol = 2 * math.sqrt(2 * p * (1 - p) / n)
    else:
        tol = 0.02
    lora = opt[opt["method"] == "lora"].sort_values("rank")
    base = rec.base
    measured = (f"{metric}: FullFT {full:.3f}, " + ", ".join(f"r{int(r)} {v:.3f}" for r, v in zip(lora["rank"], lora["best_score"]))
                + (f"; base model {base:.3f}" if np.isfinite(base) else "") + f"; tolerance {tol:.3f}")
    edges = opt.loc[opt["edge"], "curve"].tolist()
    if edges:
        measured += f" (best LR at a grid edge for {', '.join(edges)}: a better LR may lie outside the grid)"
    if np.isfinite(base) and full <= base + tol:
        return INCONCLUSIVE, measured + " (FullFT did not beat the base model: nothing to match)", how
    ok = (lora["best_score"] >= full - tol).all()
    return (REPRODUCED if ok else NOT_REPRODUCED), measured, how


def _mcnemar_z(wins: int, losses: int) -> float:
    """Paired comparison on the same problems: (wins - losses) / sqrt(wins + losses), McNemar's
    statistic in its normal form (0 when no problem changes)."""
    return (wins - losses) / math.sqrt(wins + losses) if wins + losses else 0.0


def _judge_c5_paired(rec: RLRecord, paired: dict) -> tuple[str, str, str]:
    opt, metric = rec.optimal, rec.metric
    how = (f"best {metric} over the LR grid per rank and FullFT, compared problem by problem on the same held-out set "
           "(McNemar's z = (wins - losses) / sqrt(wins + losses), problems one policy solves and the other does not): "
           f"FullFT must beat the base model (z > {C5_Z:g}), and a rank 'matches' FullFT when it is not worse beyond "
           f"noise (z >= -{C5_Z:g}).")
    full = float(opt.loc[opt["method"] == "full", "best_score"].iloc[0])
    lora = opt[opt["method"] == "lora"].sort_values("rank")
    base = rec.base
    w, l = paired["full_vs_base"]
    z_base = _mcnemar_z(w, l)
    parts = [f"{metric}: FullFT {full:.3f} vs base model {base:.3f} (+{w}/-{l} problems, z {z_base:.1f})"]
    zs = []
    for _, r in lora.iterrows():
        w_r, l_r = paired["vs_full"].get(r["curve"], (0, 0))
        zs.append(_mcnemar_z(w_r, l_r))
        parts.append(f"r{int(r['rank'])} {r['best_score']:.3f} (vs FullFT +{w_r}/-{l_r}, z {zs[-1]:.1f})")
    measured = "; ".join(parts)
    edges = opt.loc[opt["edge"], "curve"].tolist()
    if edges:
        measured += f" (best LR at a grid edge for {', '.join(edges)}: a better LR may lie outside the grid)"
    if z_base <= C5_Z:
        return INCONCLUSIVE, measured + " (FullFT did not beat the base model: nothing to match)", how
    return (REPRODUCED if all(z >= -C5_Z for z in zs) else NOT_REPRODUCED), measured, how


def counted_flops_ratio(model: str, rank: int, seq_len: int | None) -> float | None:
    """LoRA/FullFT FLOPs per token from the harness's FLOPs counter (lora_lab.flops), None where it cannot
    count the model."""
    try:
        return float(flops_ratio(model, rank=rank, layers="all", seq_len=int(seq_len or 2048)))
    except Exception:  # noqa: BLE001 - an unknown model (offline hub id) is "not computed", not a crash
        return None


def judge_c6(s: Section) -> tuple[str, str, str]:
    how = ("matmul FLOPs per token of a training step, LoRA (all layers) over FullFT, counted by lora_lab.flops for the "
           "experiment's model and sequence length; judged at the smallest rank run (the paper's ~2/3 assumes R << N). "
           "Measured time per step: median over completed runs (wall clock on the machine that ran them, reported, not judged).")
    rec = record_of(s, RankRecord)
    ranks, model = rec.ranks, rec.model
    flops = {r: counted_flops_ratio(model, r, rec.seq_len) for r in ranks}
    st = rec.step_time
    times = ""
    if st is not None and len(st) and np.isfinite(st["ratio_to_full"]).any():
        lora = st[st["rank"].notna()].sort_values("rank")
        times = "; step time LoRA/FullFT " + ", ".join(f"r{int(r)} {v:.2f}" for r, v in zip(lora["rank"], lora["ratio_to_full"]))
    if not ranks or all(v is None for v in flops.values()):
        return INCONCLUSIVE, f"FLOPs ratio not computed (lora_lab.flops could not count {model}){times}", how
    measured = "FLOPs LoRA/FullFT " + ", ".join(f"r{r} {fmt(v)}" for r, v in flops.items()) + times
    smallest = flops[min(ranks)]
    if smallest is None:
        return INCONCLUSIVE, measured, how
    return (REPRODUCED if 0.6 <= smallest <= 0.75 else NOT_REPRODUCED), measured, how


def judge_c7(s: Section) -> tuple[str, str, str]:
    rec = record_of(s, EarlyRecord)
    d, window = rec.diffs, rec.window
    how = (f"train loss of each rank at one LR (lr {rec.lr:g}, unsmoothed, mean over seeds); over the "
           f"first {EARLY:.0%} of steps (here {window}), the largest |difference| to the largest rank, relative to how much "
           f"the loss fell over those steps; curves 'coincide' when that is at most {EARLY_REL:.0%}.")
    if not len(d):
        return INCONCLUSIVE, "needs two or more ranks at one LR", how
    pair = rec.pair
    parts = [f"{c}: {fmt(v, 2)} ({a:.3f} nats)" for c, v, a in zip(d["curve"], d["early_rel_diff"], d["early_max_abs_diff"])]
    measured = f"early |diff| to {d['reference'].iloc[0]} / loss drop: " + ", ".join(parts)
    if pair and pair[0] in set(d["curve"]):
        fd = float(d.set_index("curve").loc[pair[0], "final_diff"])
        measured += f"; {pair[0]} minus {pair[1]} at the end: {fd:+.3f} nats"
    ok = (d["early_rel_diff"] <= EARLY_REL).all()
    return (REPRODUCED if ok else NOT_REPRODUCED), measured, how


def judge_c8(s: Section) -> tuple[str, str, str]:
    rec = record_of(s, InvarianceRecord)
    t = rec.table
    how = ("runs grouped into classes by everything but (alpha, init_A, LR_A, LR_B), and by the two invariants s/eta_A and "
           "alpha*eta_A*eta_B of the map (alpha/(pq), p*init_A, p*LR_A, q*LR_B); within a class, the largest |difference| of "
           f"the train-loss trajectories to the class's reference run; 'identical' = at most {INVARIANCE_TOL:g} nats.")
    if not len(t):
        return INCONCLUSIVE, "no completed LoRA runs", how
    multi = t[t.groupby("class")["class"].transform("size") > 1]
    others = multi[multi["variant"] != multi["reference"]]
    if not len(others):
        return INCONCLUSIVE, "no class has two equivalent variants", how
    worst = float(others["max_abs_diff"].max())
    measured = (f"largest within-class difference {worst:.2g} nats over {int(others['steps'].max())} steps "
                f"({len(others)} variants against their class's reference, "
                f"{multi['class'].nunique()} class{'es' if multi['class'].nunique() != 1 else ''})")
    between = rec.between
    if between is not None and np.isfinite(between):
        measured += f"; smallest difference between classes {between:.2g} nats"
    eps = set(others["adam_eps"].astype(float))
    if eps != {0.0}:
        measured += f" (Adam eps {sorted(eps)}: the invariance is exact only at eps = 0)"
    return (REPRODUCED if worst <= INVARIANCE_TOL else NOT_REPRODUCED), measured, how


def judge_c9(s: Section) -> tuple[str, str, str]:
    rec = record_of(s, CapacityRecord)
    pts, b = rec.points, rec.bounds
    how = ("tiny-facts sets of known information content I (bits); at each size, the best LR's final eval loss of each "
           f"LoRA size (P parameters) against FullFT's ({tolerance_text()}). A matching LoRA bounds the capacity from below "
           "(c >= I/P), a failing smaller one from above (c < I/P); 'about 2 bits per parameter' = the bounds allow "
           f"{BITS_RANGE[0]:g}..{BITS_RANGE[1]:g}. The ~1 bit per token (SL) and per episode (RL) statements are not measured.")
    if not len(pts) or pts["matches_full"].isna().all():
        return INCONCLUSIVE, "needs LoRA and FullFT runs on tiny-facts", how
    lo, hi = b.get("low", math.nan), b.get("high", math.nan)
    n_match = int((pts["matches_full"] == True).sum())
    measured = (f"bits per parameter in [{fmt(lo)}, {fmt(hi)}) (NaN: unbounded); {n_match} of {len(pts)} LoRA sizes match "
                f"FullFT; predicted (I <= 2P) and observed agree for "
                f"{int((pts['predicted_fits'] == pts['matches_full']).sum())} of {len(pts)}")
    if np.isfinite(lo) and np.isfinite(hi):
        if lo > hi:
            return INCONCLUSIVE, measured + " (bounds cross: noise or a non-monotone size effect)", how
        ok = lo <= BITS_RANGE[1] and hi >= BITS_RANGE[0]
        return (REPRODUCED if ok else NOT_REPRODUCED), measured, how
    if np.isfinite(lo) and lo > BITS_RANGE[1]:
        return NOT_REPRODUCED, measured, how
    if np.isfinite(hi) and hi < BITS_RANGE[0]:
        return NOT_REPRODUCED, measured, how
    return INCONCLUSIVE, measured + " (only one bound: the sizes do not bracket the capacity)", how


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "High-rank LoRA and FullFT have the same learning curve; low ranks leave the min-loss curve when the "
          "adapter's capacity runs out.", "high ranks on the FullFT curve throughout; low ranks depart late in training",
          ("rank",), "reproduced: the largest rank never leaves FullFT (tolerance as stated) and no rank leaves before a "
          "smaller one; not reproduced: the largest rank leaves FullFT; inconclusive: ranks leave out of order, or no "
          "FullFT/LoRA curve.", judge_c1),
    Claim("C2", "The optimal LoRA LR is about 10x FullFT's, nearly independent of rank; about 15x for runs of 100 "
          "steps or fewer.", "10x (fit 9.8x); ranks 4..512 within 2x; ~15x at <= 100 steps", ("rank",),
          "reproduced: the median LoRA/FullFT ratio over ranks >= 4 is within 2x of the paper's number for the runs' "
          "length (10x, or 15x at <= 100 steps) and those ranks' optima are within 2x of their median; inconclusive: an "
          "optimum at a grid edge; not reproduced otherwise.", judge_c2),
    Claim("C3", "LoRA pays more than FullFT for large batches, independent of rank.",
          "LoRA's loss grows more with batch size than FullFT's, at every rank", ("batch",),
          "reproduced: every rank's batch-size penalty exceeds FullFT's by more than the tolerance; not reproduced: "
          "none does; inconclusive: some do.", judge_c3),
    Claim("C4", "Attention-only LoRA is worse than MLP-only, even at matched parameter count; MLP-only is about as "
          "good as all layers.", "attention-only clearly worse; MLP-only ~ all layers", ("layers",),
          "reproduced: attention-only is worse than MLP-only beyond the tolerance in every matched-parameter pair, and "
          "MLP-only matches all layers at each rank; inconclusive: no matched pair; not reproduced otherwise.", judge_c4),
    Claim("C5", "In RL (policy gradient), even rank-1 LoRA matches FullFT.", "rank 1 reaches FullFT's reward",
          ("rl",), "reproduced: every rank's best score is within the noise tolerance of FullFT's; inconclusive: FullFT "
          "does not beat the base model; not reproduced otherwise.", judge_c5),
    Claim("C6", "LoRA costs about 2/3 of FullFT's FLOPs per step: (2N^2 + 6NR) / 3N^2.",
          "~2/3 of FullFT's FLOPs per step", ("rank",),
          "reproduced: the counted LoRA/FullFT FLOPs ratio at the smallest rank run is in [0.6, 0.75]; inconclusive: "
          "not computed; not reproduced otherwise. Step time is reported, not judged.", judge_c6),
    Claim("C7", "With the alpha/r scaling, curves for different ranks coincide early in training.",
          "early curves of ranks 1..512 at one LR nearly identical", ("early_rank",),
          f"reproduced: over the early steps every rank stays within {EARLY_REL:.0%} of the early loss drop of the largest "
          "rank; not reproduced otherwise; inconclusive: fewer than two ranks.", judge_c7),
    Claim("C8", "(alpha, init_A, LR_A, LR_B) has only two effective degrees of freedom under Adam (eps = 0).",
          "identical trajectories under (alpha/(pq), p*init_A, p*LR_A, q*LR_B)", ("invariance",),
          f"reproduced: every equivalent variant's trajectory is within {INVARIANCE_TOL:g} nats of its class reference; "
          "not reproduced otherwise; inconclusive: no class with two variants.", judge_c8),
    Claim("C9", "LoRA matches FullFT while it is not capacity-bound; about 2 bits per parameter.",
          "~2 bits per parameter; SL ~1 bit per token, RL ~1 bit per episode", ("capacity",),
          f"reproduced: the capacity bounds from matching and failing LoRA sizes allow {BITS_RANGE[0]:g}..{BITS_RANGE[1]:g} "
          "bits per parameter; not reproduced: they exclude it; inconclusive: they do not bracket it.", judge_c9),
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
                vs.append(Verdict(c.id, s.experiment, INCONCLUSIVE, f"the analysis of this experiment failed: {s.error}"))
                continue
            if s.record is None:
                vs.append(Verdict(c.id, s.experiment, NOT_RUN, "; ".join(s.notes) or "no completed or diverged runs"))
                continue
            verdict, measured, how = c.judge(s)
            vs.append(Verdict(c.id, s.experiment, verdict, measured, how))
        if not vs:
            vs.append(Verdict(c.id, None, NOT_RUN, f"no experiment of kind {'/'.join(c.kinds)} among the results "
                                                   f"(e.g. lora-lab sweep tiny/{c.kinds[0]})"))
        out[c.id] = vs
    return out
