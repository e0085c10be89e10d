"""The results loader on real run directories (tiny trainings) and on hand-made ones: flattened
config, summary fields, statuses, final values, a truncated metrics line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import make_config, write_run

from lora_lab.launch import train
from lora_lab.results import ResultsError, final_value, load_results, seed_of
from lora_lab.runs import find_run_dirs
from lora_lab.runs import run_dir


def test_real_runs(small):
    lora = small("train.max_steps=3", "lora.rank=2", "optim.lr=3e-3", "run.experiment=t/rank")
    full = small("train.max_steps=3", "method=full", "optim.lr=1e-3", "run.experiment=t/rank")
    summaries = [train(lora), train(full)]
    root = run_dir(lora).parent.parent.parent
    res = load_results([root])
    assert len(res.runs) == 2 and set(res.runs["status"]) == {"completed"}
    runs = res.runs.set_index("method")
    # flattened config: the dotted keys carry the resolved config's values
    assert runs.loc["lora", "lora.rank"] == 2 and runs.loc["lora", "optim.lr"] == pytest.approx(3e-3)
    assert runs.loc["full", "optim.batch_size"] == full.optim.batch_size
    assert runs.loc["lora", "experiment"] == "t/rank" and runs.loc["lora", "run_id"] == run_dir(lora).name
    # summary fields as written
    for s, method in zip(summaries, ("lora", "full")):
        assert runs.loc[method, "trainable_params"] == s["trainable_params"]
        assert runs.loc[method, "final_eval_loss"] == pytest.approx(s["final_eval_loss"])
    # one metrics row per line of metrics.jsonl; final loss = mean of the last ceil(10%) = 1 train step
    lines = [json.loads(x) for x in (run_dir(lora) / "metrics.jsonl").read_text().splitlines()]
    m = res.metrics[res.metrics["run_dir"] == runs.loc["lora", "run_dir"]]
    assert len(m) == len(lines)
    train_losses = [x["train_loss"] for x in lines if "train_loss" in x]
    assert len(train_losses) == 3
    assert runs.loc["lora", "final_loss"] == pytest.approx(train_losses[-1])
    assert res.curve(runs.loc["lora", "run_dir"])["train_loss"].tolist() == pytest.approx(train_losses)
    # the loader also takes an experiment directory or a run directory
    assert len(load_results([run_dir(lora).parent]).runs) == 2
    assert len(load_results([run_dir(full)]).runs) == 1
    assert res.runs["meta.host"].notna().all()


def test_statuses_and_truncated_line(tmp_path):
    root = tmp_path / "runs"
    ok = write_run(make_config(root, "x/rank", lr=1e-3), [3.0, 2.0, 1.0])
    write_run(make_config(root, "x/rank", lr=1e-1), [3.0, 50.0], "diverged", {"diverged_at_step": 2})
    write_run(make_config(root, "x/rank", lr=2e-1), [3.0], "failed", {"error": "ValueError: boom"})
    unfinished = write_run(make_config(root, "x/rank", lr=3e-1), [3.0, 2.5], status=None)
    with open(unfinished / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "train_lo')  # a writer killed mid-line
    (ok / "nested").mkdir()  # a run directory is not searched further
    res = load_results([root])
    counts = res.counts().set_index("experiment")
    assert counts.loc["x/rank", ["completed", "diverged", "failed", "unfinished", "total"]].tolist() == [1, 1, 1, 1, 4]
    by_lr = res.runs.set_index("optim.lr")
    assert by_lr.loc[1e-1, "final_loss"] == math.inf  # infinitely bad at its LR, not missing
    assert by_lr.loc[2e-1, "error"] == "ValueError: boom"
    assert len(res.curve(by_lr.loc[3e-1, "run_dir"])) == 2  # the cut line is dropped, the rest kept
    assert set(res.plotted()["status"]) == {"completed", "diverged"}
    assert res.of("x/rank").runs.shape[0] == 4 and res.experiments() == ["x/rank"]


def test_final_value():
    x = np.arange(1.0, 21.0)  # last 10% = last 2 values: 19, 20
    mean, sem = final_value(x)
    assert mean == pytest.approx(19.5) and sem == pytest.approx(np.std([19, 20], ddof=1) / math.sqrt(2))
    assert final_value([5.0]) == (5.0, 0.0)
    assert math.isnan(final_value([])[0])


def test_find_run_dirs(tmp_path):
    with pytest.raises(ResultsError, match="no such file"):
        find_run_dirs([tmp_path / "missing"])
    a = write_run(make_config(tmp_path / "r", "a/rank"), [1.0])
    b = write_run(make_config(tmp_path / "r", "b/rank"), [1.0])
    (tmp_path / "r" / ".hidden").mkdir()
    (tmp_path / "r" / ".hidden" / "config.yaml").write_text("method: lora\n")
    assert find_run_dirs([tmp_path / "r", a]) == sorted([a.resolve(), b.resolve()])


def test_seeds_are_read_from_the_config(tmp_path):
    """train.seed tells replicates apart (run directories differ by it); a table without it is seed 0."""
    root = tmp_path / "runs"
    for seed in (0, 3):
        write_run(make_config(root, "x/rank", lr=1e-3, seed=seed), [2.0, 1.0])
    res = load_results([root])
    assert sorted(seed_of(res.runs)) == [0, 3] and res.runs["run_id"].nunique() == 2
    assert seed_of(res.runs.drop(columns="train.seed")).tolist() == [0, 0]
