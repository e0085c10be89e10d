"""Analysis by what varies: an experiment of no paper kind (runs of `lora-lab train` in experiment
`default`, a sweep of one's own named anything, or one whose runs say `run.analysis: [explore]`),
analysed by the config keys that differ among its runs. No claim is judged on it.

    from lora_lab.explore import label_groups, varying
    runs = label_groups(res.plotted())      # a curve per group: runs equal in all but optim.lr and train.seed
    varying(runs)                           # e.g. ["lora.rank", "optim.lr", "train.seed"]

What is drawn, where it applies (under <out>/<experiment>/, as for the paper's kinds):
- lr_ucurves: final train loss vs LR of each group run at two or more LRs, with the optimum fitted as
  for the paper's kinds (curves.optimal_lrs); its table optimal_lr goes into the report's
  optimal_lr.csv with the paper kinds' columns and the group's value of every other key that varies;
  lr_ratios: LoRA / FullFT optimal LR where both ran in the same setting;
- min_loss_curves: each group's train loss, the minimum over its LRs at each step (line style by
  layer set); where two or more keys besides the method vary (and LR and seed), curves_by_<key>: a
  panel per setting of the others, a line per value of the key;
- final_vs_<key>: the best final loss over the LRs vs each numeric key that varies (batch size, rank,
  data size, steps, alpha, ...), a line per setting of the others (FullFT dashed where the key is a
  LoRA key);
- seeds: runs that differ only in train.seed are averaged, with a band of +-1 SE across seeds;
- RL runs (task=rl): the RL kind's score vs LR and reward curves (sections.rl_section, passed in as
  `rl`), unjudged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lora_lab import figures
from lora_lab.config import Config
from lora_lab.curves import CURVE_KEYS, FULL, label_runs, optimal_lrs, pointwise_min, ucurves
from lora_lab.noise import seed_values
from lora_lab.records import Section
from lora_lab.results import FINAL_WINDOW, SEED_KEY, Results
from lora_lab.runs import ADDED_KEYS, PLACEMENT_KEYS, SCHEDULE_KEYS

LR_KEY = "optim.lr"
# Config groups that say where a run is written, how it logs and how it is laid out on its devices,
# not what it computes (runs.identity leaves them out of the run id).
NOT_COMPUTED = ("run", "logger", "dist")
# Config keys that the paper kinds' optimal_lr.csv has a column for (curves.optimal_lrs), and its name.
AS_COLUMN = {"method": "method", "lora.rank": "rank", "lora.layers": "layers", "optim.batch_size": "batch_size",
             "model.name": "model"}
# Keys that curves.label_runs names in a curve's label already (rank and layers under those names),
# and the two a group is not split by.
_LABELLED = (*CURVE_KEYS, "lora.rank", "lora.layers", LR_KEY, SEED_KEY)
SHOWN_VALUES = 12  # values of a key listed in the `varies` table; more are counted


@lru_cache(maxsize=1)
def config_keys() -> tuple[str, ...]:
    """The keys of a run's config that decide what it computes, as dotted columns of the results
    table (method, task, lora.rank, optim.lr, ...), in the config's order."""
    skip = {*(f"train.{k}" for k in SCHEDULE_KEYS), *(f"{group}.{k}" for group, k in PLACEMENT_KEYS)}
    keys: list[str] = []
    for group, value in Config().to_dict().items():
        if group in NOT_COMPUTED:
            continue
        if isinstance(value, dict):
            keys += [f"{group}.{k}" for k in value if f"{group}.{k}" not in skip]
        else:
            keys.append(group)
    return tuple(keys)


def _given(v: object) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _text(v: object) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _order(v: object) -> tuple:
    """A sort key for a key's values: numbers by value, then text, unset last."""
    if not _given(v):
        return (2, 0.0, "")
    if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def _name(key: str) -> str:
    """A key's short name: its last part (max_seq_len), or the whole key where that is ambiguous (data.seed)."""
    last = key.rsplit(".", 1)[-1]
    return last if sum(k.rsplit(".", 1)[-1] == last for k in config_keys()) == 1 else key


def file_name(key: str) -> str:
    """The name a key gives a figure or table (final_vs_<name>): batch_size, rank, max_seq_len, data_seed."""
    return AS_COLUMN.get(key) or _name(key).replace(".", "_")


def settings(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs' config keys (config_keys), a column each, None where a key does not apply to a run
    (LoRA keys to FullFT, rl.* to SFT: runs.identity leaves them out too). A key that a run's
    config.yaml lacks, written before the key existed, has the value that computes what such a run
    computed (runs.ADDED_KEYS)."""
    added = {f"{group}.{key}": old for group, key, old in ADDED_KEYS}
    full = runs.get("method", pd.Series("lora", index=runs.index)) == "full"
    sft = runs.get("task", pd.Series("sft", index=runs.index)).fillna("sft") != "rl"
    out = {}
    for key in config_keys():
        col = runs[key].astype(object) if key in runs else pd.Series(None, index=runs.index, dtype=object)
        col = col.where(col.map(_given), added.get(key))
        if key.startswith("lora."):
            col = col.where(~full, None)
        if key.startswith("rl."):
            col = col.where(~sft, None)
        out[key] = col
    return pd.DataFrame(out, index=runs.index)


def varying(runs: pd.DataFrame) -> list[str]:
    """The config keys whose values differ among the runs (settings), in the config's order."""
    s = settings(runs)
    return [k for k in s.columns if s[k][s[k].map(_given)].map(_text).nunique() > 1]


def varies_table(runs: pd.DataFrame) -> pd.DataFrame:
    """(key, n_values, values): each key that varies among the runs and its values in order (at most
    SHOWN_VALUES of them listed)."""
    s = settings(runs)
    rows = []
    for key in varying(runs):
        values = sorted({_text(v): v for v in s[key] if _given(v)}.values(), key=_order)
        shown = ", ".join(_text(v) for v in values[:SHOWN_VALUES]) + (", ..." if len(values) > SHOWN_VALUES else "")
        rows.append({"key": key, "n_values": len(values), "values": shown})
    return pd.DataFrame(rows, columns=["key", "n_values", "values"])


def label_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """curves.label_runs, with each curve's label naming also the other keys that vary among the runs
    (those no paper kind varies: data.max_seq_len, optim.weight_decay, ...), so that a curve is a
    group: the runs equal in everything but optim.lr and train.seed."""
    runs = label_runs(runs)
    extra = [k for k in varying(runs) if k not in _LABELLED]
    if extra and len(runs):
        s = settings(runs)[extra]
        runs["curve"] = runs["curve"] + s.apply(
            lambda r: "".join(f" {_name(k)}={_short(v)}" for k, v in r.items() if _given(v)), axis=1)
    return runs


def _short(v: object) -> str:
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(map(_text, v)) + "]"
    return _text(v).rsplit("/", 1)[-1]


def describe(row: Mapping, keys: Sequence[str]) -> str:
    """A group's values of `keys` in a few words ("LoRA r4 bs32", "FullFT", "max_seq_len=128"); unset
    values are left out."""
    parts = []
    for k in keys:
        v = row.get(k)
        if k == "method":
            parts.append(FULL if v == "full" else "LoRA")
        elif not _given(v):
            continue
        elif k == "lora.rank":
            parts.append(f"r{int(v)}")
        elif k == "lora.layers":
            parts.append(str(v))
        elif k == "optim.batch_size":
            parts.append(f"bs{_text(v)}")
        else:
            parts.append(f"{_name(k)}={_short(v)}")
    return " ".join(parts)


def group_table(runs: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """One row per group (curve): curve, rank, layers, method and its value of each key of `axes`;
    LoRA before FullFT, then by rank and the keys' values in order."""
    s = settings(runs)
    cols = list(dict.fromkeys(["method", *axes]))
    t = pd.concat([runs[["curve", "rank", "layers"]], s[cols]], axis=1).drop_duplicates("curve")
    rows = sorted(t.to_dict("records"), key=lambda r: (r["method"] == "full", _order(r["rank"]),
                                                       *(_order(r[a]) for a in axes)))
    return pd.DataFrame(rows, columns=t.columns).reset_index(drop=True)


def group_styles(groups: pd.DataFrame, axes: Sequence[str]) -> dict[str, dict]:
    """curve -> line style: the paper's (colour by rank, FullFT black, line style by layer set) where
    only the method, rank and layer set vary; else a colour per group in the table's order, the line
    style still by layer set."""
    if set(axes) <= {"method", "lora.rank", "lora.layers"}:
        return figures.curve_styles(groups)
    colors = figures.sequential_colors(list(range(len(groups))), "viridis")
    return {r["curve"]: {"color": colors[i], "label": r["curve"],
                         "linestyle": figures.LAYER_STYLE.get(r["layers"] if _given(r["layers"]) else "all", "-")}
            for i, r in enumerate(groups.to_dict("records"))}


def _numeric(values: pd.Series) -> bool:
    v = [x for x in values if _given(x)]
    return (len({_text(x) for x in v}) > 1
            and all(isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) for x in v))


def explore_ratios(opt: pd.DataFrame, groups: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """LoRA / FullFT optimal LR of each LoRA group against the FullFT group of the same setting (equal
    in every key that varies but the method and the LoRA keys): the columns of curves.lr_ratios, and
    the FullFT curve."""
    cols = ["curve", "rank", "layers", "lora_lr", "full_lr", "ratio", "ratio_low", "ratio_high", "open", "full_curve"]
    context = [a for a in axes if a != "method" and not a.startswith("lora.")]
    g = groups.set_index("curve")
    o = opt.set_index("curve")

    def setting(c: str) -> tuple:
        return tuple(_text(v) for v in g.loc[c, context]) if context else ()

    fulls = {setting(c): c for c in o.index[o["method"] == "full"]}
    rows = []
    for name, r in o[o["method"] == "lora"].iterrows():
        ref = fulls.get(setting(name))
        if ref is None:
            continue
        f = o.loc[ref]
        rows.append({"curve": name, "rank": r["rank"], "layers": r["layers"], "lora_lr": r["best_lr"], "full_lr": f["best_lr"],
                     "ratio": r["best_lr"] / f["best_lr"], "ratio_low": r["best_lr_low"] / f["best_lr_high"],
                     "ratio_high": r["best_lr_high"] / f["best_lr_low"], "open": bool(r["edge"] or f["edge"]),
                     "full_curve": ref})
    return pd.DataFrame(rows, columns=cols)


def _value_colors(axis: str, values: Sequence[object]) -> dict[str, tuple]:
    """A colour per value of a key (by its text): by rank for lora.rank, else in order; unset black."""
    known = sorted({_text(v): v for v in values if _given(v)}.values(), key=_order)
    if axis == "lora.rank":
        colors = {_text(v): figures.rank_color(float(v)) for v in known}
    else:
        seq = figures.sequential_colors(list(range(len(known))), "viridis")
        colors = {_text(v): seq[i] for i, v in enumerate(known)}
    colors[_text(None)] = figures.rank_color(None)
    return colors


def curves_by_axis(curves: pd.DataFrame, groups: pd.DataFrame, axes: Sequence[str], axis: str,
                   title: str) -> Figure | None:
    """A panel per setting of the other keys, a line per value of `axis` (the groups' min-over-LR
    curves); None where that adds nothing to min_loss_curves (no other key varies but the method) or
    pairs nothing (the method beside LoRA keys: FullFT has none)."""
    if not [a for a in axes if a not in (axis, "method")] or (axis == "method" and any(a.startswith("lora.") for a in axes)):
        return None
    others = list(dict.fromkeys(k for k in ("method", *axes) if k != axis))
    rows = groups.to_dict("records")
    family = {r["curve"]: describe(r, others) or "all runs" for r in rows}
    colors = _value_colors(axis, [r[axis] for r in rows])

    def color(r: Mapping) -> tuple:
        if axis == "method":  # the paper's: LoRA by its rank, FullFT black
            return figures.rank_color(r["rank"] if r["method"] == "lora" and _given(r["rank"]) else None)
        return colors[_text(r[axis] if _given(r[axis]) else None)]

    styles = {r["curve"]: {"color": color(r),
                           "label": describe(r, [axis]) or (FULL if axis.startswith("lora.") else f"{_name(axis)} unset")}
              for r in rows}
    members = {f: [c for c, g in family.items() if g == f] for f in dict.fromkeys(family.values())}
    if axis.startswith("lora."):
        # FullFT has no LoRA key: it is drawn in each LoRA panel of its setting, not in panels of its own
        ctx = [k for k in others if k != "method" and not k.startswith("lora.")]
        by_curve = {r["curve"]: r for r in rows}
        fulls = [r for r in rows if r["method"] == "full"]
        members = {f: cs + [r["curve"] for r in fulls if describe(r, ctx) == describe(by_curve[cs[0]], ctx)]
                   for f, cs in members.items() if by_curve[cs[0]]["method"] == "lora"}
    panels = {f: curves[curves["curve"].isin(cs)] for f, cs in members.items()}
    x = "examples" if axis == "optim.batch_size" else "step"
    return figures.panels_figure(panels, styles, x=x, title=title)


def final_vs_axis(uc: pd.DataFrame, groups: pd.DataFrame, axes: Sequence[str], axis: str) -> pd.DataFrame:
    """(curve, <axis>, value, sem, n_seeds, lr, group): each group's best final loss over its LRs
    (the seed means) against its value of a numeric key, `curve` naming the setting of the other
    keys; a group without a value (FullFT for a LoRA key) has NaN there."""
    finite = uc[np.isfinite(uc["value"].astype(float))]
    best = finite.loc[finite.groupby("curve")["value"].idxmin()].set_index("curve") if len(finite) else finite
    others = list(dict.fromkeys(k for k in ("method", *axes) if k != axis))
    rows = []
    for r in groups.to_dict("records"):
        if r["curve"] not in best.index:
            continue
        b = best.loc[r["curve"]]
        rows.append({"curve": describe(r, others) or "all runs", axis: float(r[axis]) if _given(r[axis]) else math.nan,
                     "value": float(b["value"]), "sem": float(b["sem"]), "n_seeds": int(b["n_seeds"]), "lr": float(b["lr"]),
                     "group": r["curve"]})
    return pd.DataFrame(rows, columns=["curve", axis, "value", "sem", "n_seeds", "lr", "group"])


def _final_figure(data: pd.DataFrame, groups: pd.DataFrame, axes: Sequence[str], axis: str, title: str) -> Figure:
    """final_vs_axis drawn: a line per setting of the other keys, coloured by that setting apart from
    the method, so that a FullFT line (dashed, for a LoRA key) has its LoRA lines' colour (black when
    nothing else varies)."""
    rest = [a for a in axes if a not in (axis, "method")]
    others = list(dict.fromkeys(k for k in ("method", *axes) if k != axis))
    by_family = {describe(r, others) or "all runs": r for r in groups.to_dict("records")}
    order = list(dict.fromkeys(describe(r, rest) for r in by_family.values()))
    palette = figures.sequential_colors(list(range(len(order))), "viridis")

    def color(r: Mapping) -> tuple:
        if len(order) == 1 and r["method"] == "full":
            return figures.rank_color(None)
        return palette[order.index(describe(r, rest))]

    styles = {c: {"color": color(by_family[c]), "label": c} for c in dict.fromkeys(data["curve"])}
    at = data[data[axis].notna()]
    hlines = {c: float(g["value"].iloc[0]) for c, g in data[data[axis].isna()].groupby("curve")}
    values = sorted(at[axis].unique())
    positive = bool(len(values)) and min(values) > 0
    return figures.lines_figure(at, styles, x=axis, logx=positive, xticks=[float(v) for v in values] if positive else None,
                                xlabel=axis, ylabel="final train loss at best LR (nats)", title=title, hlines=hlines)


def _merge(sec: Section, part: Section, prefix: str) -> None:
    """Put what `part` wrote into `sec`, its names prefixed where `sec` has them already."""
    sec.files += part.files
    for name in part.figures:
        key = name if name not in sec.figures else prefix + name
        sec.figures[key], sec.drawn[key] = part.figures[name], part.drawn[name]
        if name in part.captions:
            sec.captions[key] = part.captions[name]
    for name, table in part.tables.items():
        sec.tables[name if name not in sec.tables else prefix + name] = table
    sec.notes += part.notes


def explore_section(res: Results, runs: pd.DataFrame, sec: Section,
                    rl: Callable[[Results, pd.DataFrame, Section], None] | None = None) -> None:
    """An experiment by what varies among its runs (the module docstring); its RL runs drawn by `rl`
    (sections.rl_section), under <out>/rl/ when there are SFT runs too. Fills no record: nothing is judged."""
    task = runs.get("task", pd.Series("sft", index=runs.index)).fillna("sft")
    sft, rl_runs = runs[task != "rl"], runs[task == "rl"]
    sec.table("varies", varies_table(runs))
    if len(sft):
        sft_by_what_varies(res, label_groups(sft), sec)
    if len(rl_runs) and rl is not None:
        part = Section(sec.experiment, sec.kind, sec.out / "rl") if len(sft) else sec
        rl(res, label_groups(rl_runs), part)
        if part is not sec:
            _merge(sec, part, "rl_")
    sec.record = None


def sft_by_what_varies(res: Results, runs: pd.DataFrame, sec: Section) -> None:
    """The SFT runs' figures and tables (the module docstring); `runs`: label_groups'."""
    keys = varying(runs)
    axes = [k for k in keys if k not in (LR_KEY, SEED_KEY)]
    groups = group_table(runs, axes)
    styles = group_styles(groups, axes)
    seeds = int(runs["seed"].nunique())
    mean = f"mean of {seeds} seeds, band +-1 SE" if seeds > 1 else "one seed"
    swept_lr = LR_KEY in keys
    curves = sec.table("min_loss_curves", pointwise_min(res, runs))
    sec.figure("min_loss_curves", figures.curves_figure(
        curves, styles, title=f"{sec.experiment}: " + ("min over LR of train loss" if swept_lr else "train loss")),
        "Train loss of each group" + (", the minimum over its LRs at each step" if swept_lr else "")
        + f" (a group: the runs equal in all but LR and seed; smoothed; {mean}).")
    uc = sec.table("lr_sweep", ucurves(runs))
    n_lrs = uc.groupby("curve")["lr"].nunique()
    swept = [c for c in groups["curve"] if n_lrs.get(c, 0) >= 2]
    if swept:
        sub = runs[runs["curve"].isin(swept)]
        opt = optimal_lrs(sub)
        opt.insert(len(opt.columns), "experiment", sec.experiment)
        g = groups.set_index("curve")
        for a in axes:
            if a not in AS_COLUMN:
                opt[a] = opt["curve"].map(g[a])
        sec.table("optimal_lr", opt)
        fig = figures.ucurve_figure(uc[uc["curve"].isin(swept)], opt, {c: styles[c] for c in swept},
                                    title=f"{sec.experiment}: final loss vs LR")
        sec.figure("lr_ucurves", fig,
                   f"Final train loss (mean of the last {FINAL_WINDOW:.0%} of steps; {mean}) vs LR of each group run at "
                   "two or more LRs; crosses: diverged; diamonds: optimum fitted on the seed means with its 90% interval "
                   "(arrow: open at a grid edge).")
        ratios = explore_ratios(opt, groups, axes)
        if len(ratios):
            sec.table("lr_ratios", ratios)
        if seeds > 1:
            sec.table("final_by_seed", seed_values(sub, opt))
    else:
        sec.notes.append(f"{LR_KEY} takes one value per group: no U-curve or optimal LR (run two or more LRs, e.g. "
                         f"'{LR_KEY}=3e-4,1e-3,3e-3')")
    if len(axes) >= 2:
        for axis in axes:
            fig = curves_by_axis(curves, groups, axes, axis, f"{sec.experiment}: train loss by {_name(axis)}")
            if fig is not None:
                sec.figure(f"curves_by_{file_name(axis)}", fig,
                           f"Train loss by {axis}: a panel per setting of the other keys that vary, a line per value"
                           + (" (minimum over LR at each step)" if swept_lr else "")
                           + ("; black: FullFT of the panel's setting." if axis.startswith("lora.") and
                              (groups["method"] == "full").any() else "."))
    for axis in axes:
        if not _numeric(groups[axis]):
            continue
        data = sec.table(f"final_vs_{file_name(axis)}", final_vs_axis(uc, groups, axes, axis))
        if data[axis].notna().any():
            sec.figure(f"final_vs_{file_name(axis)}",
                       _final_figure(data, groups, axes, axis, f"{sec.experiment}: final loss vs {_name(axis)}"),
                       f"Final train loss at the best LR of each group ({mean}) vs {axis}, a line per setting of the "
                       "other keys" + ("; dashed: FullFT." if axis.startswith("lora.") and data[axis].isna().any() else "."))
