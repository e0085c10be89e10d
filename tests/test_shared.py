"""Runs that experiments share (lora_lab/shared.py): trained once, each experiment with its own copy."""

from __future__ import annotations

import dataclasses
import json
import os

from conftest import make_config, write_run
from lora_lab.config import load_config
from lora_lab.results import load_results
from lora_lab.runs import run_dir, run_state
from lora_lab.shared import copy_run, finished_twin, share
from lora_lab.slurm import Job


def _job(cfg):
    return Job(overrides=[], cfg=cfg)


def _in(cfg, experiment):
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, experiment=experiment))


def test_a_finished_run_of_another_experiment_is_copied_not_trained(tmp_path):
    root = tmp_path / "runs"
    rank = make_config(root, "tiny/rank", method="full", lr=1e-3)
    src = write_run(rank, [3.0, 2.0, 1.5])
    (src / "adapter").mkdir()
    (src / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    batch = _job(_in(rank, "tiny/batch"))
    other = _job(make_config(root, "tiny/batch", method="full", lr=3e-3))  # no twin: trained
    assert batch.run_id == rank_id(rank) and batch.path != src
    plan = share([batch, other])
    assert plan.copied == [batch] and plan.launch == [other] and not plan.held
    assert "1 copied" in plan.note()
    dest = batch.path
    assert run_state(dest)["state"] == "completed"
    assert (dest / "metrics.jsonl").read_text() == (src / "metrics.jsonl").read_text()
    # big files are hard links of the source's, config.yaml names the copy's own experiment
    assert os.stat(dest / "adapter" / "adapter_model.safetensors").st_ino == os.stat(src / "adapter" / "adapter_model.safetensors").st_ino
    assert load_config(dest / "config.yaml").run.experiment == "tiny/batch"
    assert load_config(src / "config.yaml").run.experiment == "tiny/rank"
    assert json.loads((dest / "meta.json").read_text())["copied_from"] == str(src)
    assert not list(dest.parent.glob(".*copy*"))
    # the analysis sees the run in both experiments, each once
    res = load_results([root])
    assert sorted(res.runs["experiment"]) == ["tiny/batch", "tiny/rank"]
    # a second launch finds it done: nothing to copy or train
    assert finished_twin(batch) == src
    again = share([other])
    assert again.launch == [other] and not again.copied


def rank_id(cfg):
    return run_dir(cfg).name


def test_twins_launched_together_train_once_and_the_other_is_filled_after(tmp_path):
    root = tmp_path / "runs"
    a = _job(make_config(root, "tiny/rank", lr=3e-3))
    b = _job(_in(a.cfg, "tiny/layers"))
    c = _job(_in(a.cfg, "tiny/batch"))
    plan = share([a, b, c])
    assert plan.launch == [a] and [h for h, _ in plan.held] == [b, c] and all(t is a for _, t in plan.held)
    assert "2 trained once" in plan.note()
    # the launch fails or is stopped: the held ones are left, to be launched next time
    assert len(plan.fill()) == 2 and run_state(b.path)["state"] == "pending"
    write_run(a.cfg, [2.0, 1.0])  # the launch trained it
    assert plan.fill() == []
    for j in (b, c):
        assert run_state(j.path)["state"] == "completed"
        assert load_config(j.path / "config.yaml").run.experiment == j.cfg.run.experiment


def test_a_failed_or_unfinished_twin_is_not_copied_and_an_own_unfinished_run_resumes(tmp_path):
    root = tmp_path / "runs"
    failed = make_config(root, "tiny/rank", lr=1e-2)
    write_run(failed, [2.0, float("inf")], status="failed")
    unfinished = make_config(root, "tiny/rank", lr=1e-3)
    write_run(unfinished, [2.0], status=None)
    j1, j2 = _job(_in(failed, "tiny/batch")), _job(_in(unfinished, "tiny/batch"))
    plan = share([j1, j2])
    assert plan.launch == [j1, j2] and not plan.copied
    # a job whose own directory holds an unfinished run resumes it; its pending twin waits for it
    own = make_config(root, "tiny/layers", lr=3e-4)
    write_run(own, [2.0], status=None)
    twin = _job(_in(own, "tiny/batch"))
    plan = share([twin, _job(own)])
    assert [j.cfg.run.experiment for j in plan.launch] == ["tiny/layers"] and plan.held[0][0] is twin


def test_copy_replaces_an_empty_directory_and_leaves_no_half_copy(tmp_path):
    root = tmp_path / "runs"
    src_cfg = make_config(root, "tiny/rank", method="full")
    src = write_run(src_cfg, [1.0])
    job = _job(_in(src_cfg, "tiny/batch"))
    job.path.mkdir(parents=True)  # e.g. made by a launcher that never started the run
    assert run_state(job.path)["state"] == "pending"
    copy_run(src, job)
    assert run_state(job.path)["state"] == "completed"
    assert sorted(p.name for p in job.path.parent.iterdir()) == [job.path.name]
