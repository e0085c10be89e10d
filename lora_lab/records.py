"""What the analysis of one experiment produced: its Section (files, figures, tables, notes) and the
typed record of the numbers its claims are judged by (lora_lab/claims.py).

    sec = analyze_experiment(res, "tiny/rank", out)      # lora_lab/sections.py
    sec.record.ratios                                      # a RankRecord: C1, C2 and C6 read it
    sec.record.early.diffs                                 # and C7 its EarlyRecord (sections.early_curves)

Every comparison a claim rests on carries its noise: the seeds behind it and a standard error
(columns such as gap_se, n_seeds, noise; or per-seed tables the rules pair up, noise.paired).

One record class per kind of experiment, holding exactly what the rules of that kind's claims read.
The classes are frozen and slotted: a section that writes, or a rule that reads, a name the record
does not declare fails at once (TypeError, AttributeError) instead of turning a verdict
"inconclusive" for a metric that was renamed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import matplotlib.figure
import pandas as pd

from lora_lab import figures


@dataclass(frozen=True, slots=True)
class RankRecord:
    """Rank curves and LR sweeps (C1, C2, C6), and the early curves at one of their LRs (C7)."""

    departures: pd.DataFrame | None  # curves.departures with a rank column; None without a FullFT curve
    ratios: pd.DataFrame  # curves.lr_ratios of the optima fitted on the seed means of the final losses
    seed_ratios: pd.DataFrame  # curves.seed_ratios: the same, each seed's runs alone
    ratio_by_steps: pd.DataFrame  # sections.ratios_by_steps: the ratios refitted at several training lengths
    steps: int  # the runs' length
    step_time: pd.DataFrame  # sections.step_times
    ranks: list[int]
    model: str
    seq_len: int | None
    hidden: int | None  # the model's hidden size (None: the model could not be looked up)
    alpha: float  # the LoRA runs' lora.alpha (median; NaN without LoRA runs)
    adapters: pd.DataFrame  # sections.lora_adapters: rank, layer set and lm_head adapter of each LoRA curve
    early: EarlyRecord  # sections.early_curves: C7 from the rank grid's own LoRA runs at one of its LRs


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """Batch size (C3)."""

    penalties: pd.DataFrame  # per rank and FullFT: best final loss at the largest minus at the smallest batch
    seed_values: pd.DataFrame  # noise.seed_values: each seed's final loss at each curve's best grid LR


@dataclass(frozen=True, slots=True)
class LayersRecord:
    """Layer sets (C4)."""

    layers: pd.DataFrame  # per curve: layers, rank, best final loss, its grid edge, trainable parameters
    seed_values: pd.DataFrame  # noise.seed_values: each seed's final loss at each curve's best grid LR


@dataclass(frozen=True, slots=True)
class RLRecord:
    """RL (C5)."""

    optimal: pd.DataFrame  # curves.optimal_lrs of the selection score; best_score: the judged score at that LR
    metric: str  # what the score is (held-out accuracy or train reward)
    base: float  # the base model's held-out accuracy, or FullFT's first rewards (NaN: not logged)
    paired: pd.DataFrame | None  # sections.paired_outcomes; None when the runs logged no per-problem outcomes
    selected_on: str  # what each arm's LR was chosen on: sections.VALIDATION, or the judged numbers themselves
    seed_scores: pd.DataFrame  # noise.seed_values of the score: each seed's score at each curve's chosen LR


@dataclass(frozen=True, slots=True)
class EarlyRecord:
    """Early curves of several ranks at one LR (C7): an early_rank experiment's record, and a rank
    experiment's RankRecord.early."""

    lr: float  # sections.early_lr; NaN: no LR was run at every rank with every seed
    chosen: str  # how lr was chosen, or why there is none
    window: int  # the early steps judged
    diffs: pd.DataFrame  # per rank: early difference to the largest rank (mean over seeds, its SE) and final difference
    pair: tuple[str, str]  # the two curves whose final difference is reported


@dataclass(frozen=True, slots=True)
class InvarianceRecord:
    """Equivalent (alpha, init_A, LR_A, LR_B) parametrisations (C8)."""

    table: pd.DataFrame  # per run: class, variant, reference, adam_eps, steps, max_abs_diff
    between: float  # smallest largest-difference between two class references (NaN: one class)


@dataclass(frozen=True, slots=True)
class CapacityRecord:
    """Loss vs LoRA size on sets of known information content (C9)."""

    points: pd.DataFrame  # per LoRA size and data size: loss, FullFT's, the gap and its SE, matches_full, edge, predicted_fits
    bounds: dict[str, float]  # sections.capacity_bounds: {"low", "high"} bits per parameter
    gate: pd.DataFrame  # sections.storage_gate, per data size: FullFT's re-ask loss against its held-out (no-knowledge) loss


Record = Union[RankRecord, BatchRecord, LayersRecord, RLRecord, EarlyRecord, InvarianceRecord, CapacityRecord]

# experiment kind (curves.KINDS) -> the record its section fills
RECORDS: dict[str, type] = {
    "rank": RankRecord, "batch": BatchRecord, "layers": LayersRecord, "rl": RLRecord, "early_rank": EarlyRecord,
    "invariance": InvarianceRecord, "capacity": CapacityRecord,
}


@dataclass
class Section:
    """One experiment's analysis: what was written, and `record` (None: nothing to judge, see `notes`)."""

    experiment: str
    kind: str | None
    out: Path
    files: list[Path] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)  # name -> PNG, for the report
    drawn: dict[str, matplotlib.figure.Figure] = field(default_factory=dict)  # name -> Figure, for notebooks
    captions: dict[str, str] = field(default_factory=dict)  # name -> caption under the figure in the report
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    record: Record | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the analysis of this experiment raised: the report says so

    def figure(self, name: str, fig: matplotlib.figure.Figure, caption: str = "") -> None:
        paths = figures.save(fig, self.out, name)
        self.drawn[name] = fig
        self.files += paths
        self.figures[name] = paths[0]
        if caption:
            self.captions[name] = caption

    def table(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        path = self.out / f"{name}.csv"
        self.out.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False)
        self.files.append(path)
        self.tables[name] = df
        return df
