"""The claims scorecard: hand-made experiments of every kind whose verdicts are known, the rules in
both directions, a claim that did not run, rules that read only what their records declare, and a
self-contained report.html."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import STEPS, decay, make_config, make_invariance, make_rank_results, write_run

from lora_lab import claims
from lora_lab.claims import CLAIMS, INCONCLUSIVE, NOT_REPRODUCED, NOT_RUN, REPRODUCED, judge, judge_c3, judge_c8
from lora_lab.config import DataConfig
from lora_lab.records import RECORDS, BatchRecord, InvarianceRecord
from lora_lab.report import analyze, md_table
from lora_lab.results import load_results
from lora_lab.sections import Section, capacity_bounds, run_sections
from lora_lab.tiny.facts import bits_per_fact

GRID = (1e-3, 3e-3, 1e-2)


def trajectory(lr: float, best_lr: float, offset: float = 0.0, steps: int = STEPS) -> list[float]:
    """Shared decay + a U in log LR + an offset, both growing in over training."""
    x = math.log10(lr / best_lr)
    return [1 + 7 * decay(t) + (0.5 * x * x + offset) * (1 - decay(t)) for t in range(1, steps + 1)]


def make_batch(root: Path, lora_penalty: float = 0.2, full_penalty: float = 0.05) -> None:
    for bs in (8, 32):
        for lr in (1e-4, 3e-4, 1e-3):
            write_run(make_config(root, "tiny/batch", "full", lr=lr, batch_size=bs),
                      trajectory(lr, 3e-4, full_penalty if bs == 32 else 0.0))
        for rank in (4, 16):
            for lr in GRID:
                write_run(make_config(root, "tiny/batch", rank=rank, lr=lr, batch_size=bs),
                          trajectory(lr, 3e-3, lora_penalty if bs == 32 else 0.0))


def make_layers(root: Path) -> None:
    # (layers, rank, trainable parameters, loss offset): attention-only r8 has about MLP-only r4's parameters
    for layers, rank, params, offset in (("attn", 4, 4000, 0.3), ("attn", 8, 8000, 0.2), ("mlp", 4, 6000, 0.0),
                                         ("all", 4, 10000, -0.005)):
        for lr in GRID:
            write_run(make_config(root, "tiny/layers", rank=rank, lr=lr, layers=layers), trajectory(lr, 3e-3, offset),
                      trainable=params)


def make_rl(root: Path, rank1_acc: float = 0.58) -> None:
    data = DataConfig(name="tiny-math")
    for method, rank, peak in (("full", None, 0.6), ("lora", 1, rank1_acc), ("lora", 4, 0.6)):
        for lr in GRID:
            acc = peak - 0.3 * math.log10(lr / 3e-3) ** 2
            lines = [{"step": t, "reward": acc * (1 - decay(t)), "accuracy": acc, "completion_len": 20} for t in range(1, 21)]
            cfg = make_config(root, "tiny/rl", method, rank=rank or 4, lr=lr, data=data, task="rl", steps=20)
            write_run(cfg, [], summary={"final_eval_accuracy": acc, "base_eval_accuracy": 0.1, "final_reward": acc},
                      extra_lines=lines)


def make_rl_paired(root: Path, base: str, finals: dict[tuple[str, int | None], str]) -> None:
    """RL runs whose eval lines say which of the held-out problems each policy solves: the best LR
    (3e-3) ends with `finals[(method, rank)]`, the others solve nothing."""
    data = DataConfig(name="tiny-math", eval_size=len(base))
    for (method, rank), final in finals.items():
        for lr in GRID:
            end = final if lr == 3e-3 else "0" * len(base)
            acc = end.count("1") / len(end)
            lines = [{"step": t, "reward": acc, "accuracy": acc, "completion_len": 20} for t in range(1, 21)]
            lines += [{"step": 0, "eval_accuracy": base.count("1") / len(base), "eval_solved": base},
                      {"step": 20, "eval_accuracy": acc, "eval_solved": end}]
            cfg = make_config(root, "tiny/rl", method, rank=rank or 4, lr=lr, data=data, task="rl", steps=20)
            write_run(cfg, [], summary={"final_eval_accuracy": acc, "base_eval_accuracy": base.count("1") / len(base),
                                        "final_reward": acc}, extra_lines=lines)


@pytest.mark.parametrize("finals, verdict, shown", [
    # FullFT solves 40 more of 200 problems than the base model (z = 6.3); rank 1 loses 10 of FullFT's and wins
    # 6 others (z = -1.0): a match.
    ({("full", None): "1" * 100 + "0" * 100, ("lora", 1): "1" * 90 + "0" * 10 + "1" * 6 + "0" * 94},
     REPRODUCED, "vs FullFT +6/-10"),
    # Rank 1 solves 30 fewer (z = -5.5).
    ({("full", None): "1" * 100 + "0" * 100, ("lora", 1): "1" * 70 + "0" * 130}, NOT_REPRODUCED, "+0/-30"),
    # FullFT's 64 solved are the base model's 60 plus 4 (z = 2.0, not beyond 2): nothing to match.
    ({("full", None): "1" * 64 + "0" * 136, ("lora", 1): "1" * 64 + "0" * 136}, INCONCLUSIVE, "+4/-0"),
])
def test_c5_compares_held_out_outcomes_problem_by_problem(tmp_path, finals, verdict, shown):
    base = "1" * 60 + "0" * 140
    make_rl_paired(tmp_path / "runs", base, finals)
    result = analyze([tmp_path / "runs"], tmp_path / "out", progress=False)
    c5 = result["verdicts"]["C5"][0]
    assert c5["verdict"] == verdict, c5["measured"]
    assert shown in c5["measured"] and "problem by problem" in c5["how"]


def make_early(root: Path, early_gap: float = 0.001) -> None:
    for rank in (1, 4, 16, 64):
        gap = (64 - rank) / 64
        losses = [1 + 7 * decay(t) + early_gap * gap + 0.2 * gap * max(0, t - 20) / 30 for t in range(1, STEPS + 1)]
        write_run(make_config(root, "tiny/early_rank", rank=rank, lr=3e-3), losses)


def make_capacity(root: Path) -> None:
    """LoRA of P parameters matches FullFT exactly when it holds the set at 2 bits per parameter."""
    for n in (100, 1000):
        data = DataConfig(name="tiny-facts", num_examples=n)
        bits = n * bits_per_fact()
        for lr in (1e-4, 3e-4, 1e-3):
            write_run(make_config(root, "tiny/capacity", "full", lr=lr, data=data), trajectory(lr, 3e-4), trainable=10**6)
        for rank in (1, 2, 4, 8, 32):
            params = 500 * rank
            offset = 0.0 if 2 * params >= bits else 0.3
            for lr in GRID:
                write_run(make_config(root, "tiny/capacity", rank=rank, lr=lr, data=data), trajectory(lr, 3e-3, offset),
                          trainable=params)


def make_all(root: Path) -> Path:
    make_rank_results(root)
    make_batch(root)
    make_layers(root)
    make_rl(root)
    make_early(root)
    make_invariance(root)
    make_capacity(root)
    return root


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    root = make_all(tmp_path_factory.mktemp("all") / "runs")
    out = root.parent / "out"
    return analyze([root], out, progress=False), out


def test_every_claim_judged_on_known_data(full_report):
    result, out = full_report
    verdicts = {c: [v["verdict"] for v in vs] for c, vs in result["verdicts"].items()}
    assert verdicts == {c.id: [REPRODUCED] for c in CLAIMS}, result["verdicts"]
    by = {c: vs[0] for c, vs in result["verdicts"].items()}
    assert "r1: 5x" in by["C2"]["measured"] and "median (rank >= 4) 10x" in by["C2"]["measured"]
    assert "bits per parameter in [2, 3.99)" in by["C9"]["measured"]
    assert "FullFT +0.050" in by["C3"]["measured"]
    cap = pd.read_csv(out / "tiny" / "capacity" / "capacity.csv")
    assert (cap["predicted_fits"] == cap["matches_full"]).all()
    inv = pd.read_csv(out / "tiny" / "invariance" / "invariance.csv")
    assert inv["class"].nunique() == 2 and inv.groupby("class").size().tolist() == [3, 1]


def test_report_files(full_report):
    _, out = full_report
    md = (out / "report.md").read_text()
    for c in CLAIMS:
        assert f"## {c.id}: " in md and c.rule in md
    for png in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / png).is_file()
    html = (out / "report.html").read_text()
    # self-contained: every image is embedded, nothing is loaded from elsewhere
    assert html.count("data:image/png;base64,") == md.count("![") == len(list(out.glob("*/*/*.png"))) == 11
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    rl = pd.read_csv(out / "tiny" / "rl" / "optimal_lr_rl.csv")
    assert rl["best_lr"].tolist() == pytest.approx([3e-3] * 3)
    assert set(pd.read_csv(out / "optimal_lr.csv")["experiment"]) == {"tiny/rank", "tiny/batch", "tiny/layers"}
    for kind in ("batch", "layers", "rl", "early_rank", "invariance", "capacity"):
        assert list((out / "tiny" / kind).glob("*.png")), kind


def test_not_run_and_negative_verdicts(tmp_path):
    root = tmp_path / "runs"
    make_batch(root, lora_penalty=0.05, full_penalty=0.05)  # no extra cost for LoRA
    make_invariance(root, broken=0.01)  # one "equivalent" variant drifts by 0.01 nats
    make_early(root, early_gap=0.5)
    make_rl(root, rank1_acc=0.2)
    result = analyze([root], tmp_path / "out", progress=False)
    v = {c: vs[0]["verdict"] for c, vs in result["verdicts"].items()}
    assert v == {"C1": NOT_RUN, "C2": NOT_RUN, "C3": NOT_REPRODUCED, "C4": NOT_RUN, "C5": NOT_REPRODUCED,
                 "C6": NOT_RUN, "C7": NOT_REPRODUCED, "C8": NOT_REPRODUCED, "C9": NOT_RUN}
    assert "sweep tiny/rank" in result["verdicts"]["C1"][0]["measured"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "**not run**" in md


def test_rules_on_tables(tmp_path):
    sec = Section("x/batch", "batch", tmp_path)
    pen = pd.DataFrame({"family": ["FullFT", "LoRA r4", "LoRA r16"], "method": ["full", "lora", "lora"],
                        "batch_small": [8] * 3, "batch_large": [64] * 3, "loss_small": [1.0] * 3,
                        "loss_large": [1.05, 1.2, 1.06], "penalty": [0.05, 0.2, 0.06]})
    sec.record = BatchRecord(penalties=pen)
    assert judge_c3(sec)[0] == INCONCLUSIVE  # r4 pays more, r16 does not (0.01 < tolerance)
    sec.record = BatchRecord(penalties=pen[pen["family"] != "LoRA r16"])
    assert judge_c3(sec)[0] == REPRODUCED
    sec = Section("x/invariance", "invariance", tmp_path)
    sec.record = InvarianceRecord(between=math.nan, table=pd.DataFrame({
        "class": [0, 1], "variant": ["a", "b"], "reference": ["a", "b"], "adam_eps": [0.0, 0.0], "steps": [5, 5],
        "max_abs_diff": [0.0, 0.0]}))
    assert judge_c8(sec)[0] == INCONCLUSIVE  # no class with two variants
    assert judge([])["C8"][0].verdict == NOT_RUN


@pytest.fixture(scope="module")
def all_sections(full_report) -> list[Section]:
    """The sections of full_report's runs, analysed again (analyze returns what it wrote, not them)."""
    _, out = full_report
    return run_sections(load_results([out.parent / "runs"]), out.parent / "sections")


def _reading(record: object, seen: set[str]) -> object:
    """A copy of `record` that adds the name of every attribute read on it to `seen`."""

    class Reading(type(record)):
        __slots__ = ()

        def __getattribute__(self, name: str) -> object:
            if not name.startswith("_"):
                seen.add(name)
            return object.__getattribute__(self, name)

    return Reading(**{f.name: getattr(record, f.name) for f in dataclasses.fields(record)})


def _renamed(cls: type, old: str, new: str) -> type:
    """A copy of a record class with one field renamed (frozen and slotted like the original)."""
    return dataclasses.make_dataclass(cls.__name__, [(new if f.name == old else f.name, f.type) for f in dataclasses.fields(cls)],
                                      frozen=True, slots=True)


def test_rules_read_their_records_by_name(full_report, all_sections, monkeypatch):
    """Each rule reads the record of its experiment's kind by attribute: judging the full report reads
    exactly the fields the records declare, and with any field a rule reads renamed (a copy of the
    record class put in its place) the rule fails instead of giving a verdict."""
    result, _ = full_report
    for cls in RECORDS.values():  # no __dict__ for a misspelt name to land in, and nothing to change after the fact
        assert cls.__dataclass_params__.frozen and "__slots__" in vars(cls), cls
    by_kind = {s.kind: s for s in all_sections}
    read: dict[str, set[str]] = {kind: set() for kind in RECORDS}
    for c in CLAIMS:
        sec = by_kind[c.kinds[0]]
        cls = RECORDS[sec.kind]
        assert type(sec.record) is cls
        seen: set[str] = set()
        v = result["verdicts"][c.id][0]
        assert c.judge(dataclasses.replace(sec, record=_reading(sec.record, seen))) == (v["verdict"], v["measured"], v["how"])
        assert seen, f"{c.id} reads nothing of its {cls.__name__}"
        read[sec.kind] |= seen
        for name in sorted(seen):
            renamed = _renamed(cls, name, f"{name}_renamed")
            values = {(f"{name}_renamed" if f.name == name else f.name): getattr(sec.record, f.name)
                      for f in dataclasses.fields(cls)}
            with monkeypatch.context() as m:
                m.setattr(claims, cls.__name__, renamed)
                with pytest.raises(AttributeError, match=name):
                    c.judge(dataclasses.replace(sec, record=renamed(**values)))
    # and a record holds nothing that no rule reads
    assert read == {kind: {f.name for f in dataclasses.fields(cls)} for kind, cls in RECORDS.items()}


def test_capacity_bounds_hand_calculation():
    pts = pd.DataFrame({"num_examples": [100, 100, 100], "bits": [2000.0] * 3, "trainable_params": [250, 500, 1000],
                        "matches_full": [False, False, True]})
    b = capacity_bounds(pts)
    assert b["low"] == pytest.approx(2000 / 1000) and b["high"] == pytest.approx(2000 / 500)
    only_ok = capacity_bounds(pts.assign(matches_full=True))
    assert only_ok["low"] == pytest.approx(2000 / 250) and math.isnan(only_ok["high"])


def test_md_table():
    t = md_table(pd.DataFrame({"a": [1.23456789, math.nan], "b": ["x|y", None]}))
    assert t.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x\\|y |", "|  |  |"]


def test_a_failing_section_does_not_sink_the_report(tmp_path, monkeypatch, capsys):
    from lora_lab import sections

    root = tmp_path / "runs"
    make_early(root)
    make_invariance(root)

    def broken(res, runs, sec):
        raise KeyError("some_column")

    monkeypatch.setitem(sections.SECTIONS, "early_rank", broken)
    result = analyze([root], tmp_path / "out", progress=False)
    c7 = result["verdicts"]["C7"][0]
    assert c7["verdict"] == INCONCLUSIVE and "failed: KeyError" in c7["measured"]
    assert result["verdicts"]["C8"][0]["verdict"] == REPRODUCED
    assert "KeyError" in capsys.readouterr().err
