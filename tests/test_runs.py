"""The run directory as a reader may find it: planted files that would run code, a summary lost at
the end of a run, a second launch that overlaps the end of the same run, damaged files among many
good runs. Nothing read from a run directory may execute code, nothing finished is lost or redone,
and one bad file never blocks the rest of the tree."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import LORA_LAB, SMALL, make_config, train_steps, write_run
from lora_lab import distributed
from lora_lab.launch import train
from lora_lab.results import load_results
from lora_lab.runs import CheckpointError, RunDir, load_run, load_state, read_metrics, run_dir, run_state


class Payload:
    """Unpickling this runs a shell command that leaves a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_checkpoint_is_refused_and_runs_nothing(small, tmp_path):
    cfg = small("method=full", "optim.lr=1e-4", "train.max_steps=2")
    rd = RunDir(run_dir(cfg))
    marker = tmp_path / "pwned"
    rd.checkpoint_path.parent.mkdir(parents=True)
    torch.save({"step": 1, "trainable": Payload(marker)}, rd.checkpoint_path)  # torch's own zip format
    with pytest.raises(CheckpointError, match=f"^{rd.checkpoint_path}: refused, nothing in it was run: it names GLOBAL"):
        train(cfg)
    with pytest.raises(CheckpointError, match=str(rd.checkpoint_path)):
        load_state(rd.checkpoint_path)
    # A raw pickle under the same name, read by a plain relaunch of the command and by load_run.
    rd.checkpoint_path.write_bytes(pickle.dumps({"step": 1, "x": Payload(marker)}))
    res = subprocess.run([LORA_LAB, "train", *SMALL, f"run.root={cfg.run.root}", "method=full", "optim.lr=1e-4",
                          "train.max_steps=2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and str(rd.checkpoint_path) in res.stderr and "refused" in res.stderr
    assert not rd.summary_path.exists()  # refused before the run started: nothing recorded as its result
    rd.write_config(cfg)
    with pytest.raises(CheckpointError, match=str(rd.checkpoint_path)):
        load_run(rd.path)  # a FullFT run's weights are read through the same loader
    assert not marker.exists()


def test_a_corrupt_checkpoint_names_the_file_and_the_way_out(small):
    cfg = small("train.max_steps=2")
    rd = RunDir(run_dir(cfg))
    rd.checkpoint_path.parent.mkdir(parents=True)
    rd.checkpoint_path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match=f"^{rd.checkpoint_path}: refused.*not a checkpoint written by lora-lab.*delete it"):
        load_state(rd.checkpoint_path)
    torch.save({"step": 1}, rd.checkpoint_path)
    rd.checkpoint_path.write_bytes(rd.checkpoint_path.read_bytes()[:-40])  # cut short: a torn copy
    with pytest.raises(CheckpointError, match=f"^{rd.checkpoint_path}: unreadable .*delete it"):
        load_state(rd.checkpoint_path)


def test_checkpoints_hold_tensors_and_plain_values_and_old_ones_still_resume(small, tmp_path):
    cfg = small("train.max_steps=2", "train.checkpoint_every=1")
    train(cfg)
    state = load_state(RunDir(run_dir(cfg)).checkpoint_path)
    assert state["final"] and torch.serialization.get_unsafe_globals_in_checkpoint(
        RunDir(run_dir(cfg)).checkpoint_path) == []
    # A checkpoint written before RNG state was stored as tensors carries numpy's state as an array.
    old = tmp_path / "old.pt"
    torch.save({"step": 1, "rng": {"numpy": np.random.get_state()}}, old)
    assert load_state(old)["rng"]["numpy"][1].dtype == np.uint32


def test_a_planted_sharded_checkpoint_is_refused_before_it_is_read(tmp_path):
    marker = tmp_path / "pwned"
    dcp = tmp_path / "checkpoint" / "dcp"
    dcp.mkdir(parents=True)
    (dcp / "counters.json").write_text(json.dumps({"step": 1, "rng": torch.get_rng_state().tolist()}))
    (dcp / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(CheckpointError, match=f"^{dcp / '.metadata'}: refused"):
        distributed.load_sharded(tmp_path / "checkpoint" / "state.pt", model, opt)
    assert not marker.exists()


def test_a_sharded_checkpoint_of_ours_passes_the_check_and_loads(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = tmp_path / "checkpoint" / "state.pt"
    ckpt.parent.mkdir()
    distributed.save_sharded(ckpt, model, opt, {"step": 3})
    want = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh(torch.ones(1, 3)).sum().backward()
    fresh_opt.step()
    assert distributed.load_sharded(ckpt, fresh, fresh_opt)["step"] == 3
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in want.items())
    assert fresh_opt.state_dict()["param_groups"][0]["lr"] == 0.1


def test_a_launch_that_overlaps_the_end_of_the_same_run_does_not_train_it_again(small, monkeypatch):
    cfg = small("train.max_steps=3")
    first = train(cfg)
    rd = RunDir(run_dir(cfg))
    lines = rd.metrics_path.read_text()
    # The second launch looked before the first one wrote its summary, then took the lock after.
    real, calls = RunDir.summary, []

    def late(self):
        calls.append(1)
        return None if len(calls) == 1 else real(self)

    monkeypatch.setattr(RunDir, "summary", late)
    again = train(cfg)
    assert len(calls) >= 2 and again == first and rd.metrics_path.read_text() == lines


@pytest.mark.parametrize("task", ["sft", "rl"])
def test_a_finished_run_that_lost_its_summary_gets_it_back_without_training(small, task, tmp_path):
    extra = (["task=rl", "data=tiny-math", "data.eval_size=4", "rl.group_size=2", "rl.prompts_per_step=2",
              "rl.max_new_tokens=4", "optim.batch_size=32"] if task == "rl" else [])
    cfg = small("train.max_steps=2", *extra)
    first = train(cfg)
    rd = RunDir(run_dir(cfg))
    lines = rd.metrics_path.read_text()
    rd.summary_path.unlink()  # deleted, or the process was killed between the final checkpoint and it
    again = train(cfg)
    assert rd.metrics_path.read_text() == lines  # not one step trained again
    assert {k: v for k, v in again.items() if k != "rebuilt_from"} == first and again["rebuilt_from"] == "checkpoint"
    assert json.loads(rd.summary_path.read_text())["status"] == "completed"


def test_a_summary_is_rebuilt_from_a_final_checkpoint_written_before_it_carried_one(small):
    cfg = small("train.max_steps=2")
    first = train(cfg)
    rd = RunDir(run_dir(cfg))
    state = load_state(rd.checkpoint_path)
    del state["summary"]
    rd.save_checkpoint(state)
    rd.summary_path.unlink()
    again = train(cfg)
    for key in ("status", "steps", "final_train_loss", "final_eval_loss", "final_train_bpb", "final_eval_bpb",
                "trainable_params", "tokens", "examples"):
        assert again[key] == first[key], key
    assert again["rebuilt_from"] == "metrics"


def test_a_bad_line_in_the_middle_of_metrics_loses_no_valid_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    good = [{"step": s, "train_loss": 1.0 / s} for s in range(1, 7)]
    text = [json.dumps(r) + "\n" for r in good]
    text.insert(2, '{"step": 3, "train_lo\n')  # a broken line after step 2
    text.insert(5, "\xff\xfe binary\n")
    path.write_text("".join(text) + '{"step": 7, "tr', encoding="latin-1")  # and a last line cut short
    problems: list[str] = []
    assert read_metrics(path, problems) == good
    assert problems == [f"{path} line 3: " + problems[0].split(": ", 1)[1], f"{path} line 6: " + problems[1].split(": ", 1)[1]]
    rd = RunDir(tmp_path)
    rd.open_metrics(keep_upto_step=4)  # resume at a step-4 checkpoint: lines after it are redone
    rd.unlock()
    assert read_metrics(path) == good[:4]


def test_resume_after_a_damaged_metrics_line_logs_every_step_once(small, tmp_path, monkeypatch):
    cfg = small("train.max_steps=6", "train.checkpoint_every=2")
    rd = RunDir(run_dir(cfg))
    real_log = RunDir.log

    def interrupted_at_step_5(self, row):
        if row.get("step") == 5 and "train_loss" in row:
            raise KeyboardInterrupt  # Ctrl-C: the run stays unfinished, its step-4 checkpoint kept
        real_log(self, row)

    monkeypatch.setattr(RunDir, "log", interrupted_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(RunDir, "log", real_log)
    lines = rd.metrics_path.read_text().splitlines(keepends=True)
    rd.metrics_path.write_text("".join([lines[0], "{oops\n", *lines[1:]]))  # a broken line after step 1
    s = train(cfg)
    assert s["status"] == "completed" and train_steps(rd.path) == list(range(1, 7))
    clean = train(small("train.max_steps=6", "train.checkpoint_every=2", f"run.root={tmp_path / 'clean'}"))
    assert s["final_train_loss"] == pytest.approx(clean["final_train_loss"], abs=1e-6)


def test_a_signal_inside_a_checkpoint_write_leaves_the_run_unfinished_not_failed(small, monkeypatch):
    # A SIGTERM or Ctrl-C that lands while torch.save writes: its zip writer's clean-up then raises a
    # RuntimeError of its own ("unexpected pos ..."), whose context is the KeyboardInterrupt.
    cfg = small("train.max_steps=6", "train.checkpoint_every=2")
    rd = RunDir(run_dir(cfg))
    real_save = RunDir.save_checkpoint

    def interrupted_while_writing_step_4(self, state):
        if state["step"] == 4:
            try:
                raise KeyboardInterrupt
            finally:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 42048 vs 41936")
        real_save(self, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupted_while_writing_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    assert not rd.summary_path.exists() and run_state(rd.path)["state"] == "unfinished"
    monkeypatch.undo()
    s = train(cfg)  # resumes from the step-2 checkpoint
    assert s["status"] == "completed" and train_steps(rd.path) == list(range(1, 7))
    assert json.loads(rd.meta_path.read_text())["resumed_from_step"] == 2


def test_one_damaged_run_is_reported_by_path_and_the_rest_are_read(tmp_path, capsys):
    root = tmp_path / "runs"
    ok = [write_run(make_config(root, "x/rank", lr=lr), [3.0, 2.0, 1.0]) for lr in (1e-3, 2e-3, 3e-3, 4e-3, 5e-3)]
    binary, listy, nan = ok[1], ok[2], ok[3]
    (binary / "summary.json").write_bytes(b"\x89PNG\x00\xff")
    (listy / "summary.json").write_text("[1, 2]\n")
    with open(nan / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "train_loss": NaN}\n')
    bad_yaml = ok[4]
    (bad_yaml / "config.yaml").write_text("method: [unclosed\n")
    orphan = root / "x" / "rank" / "orphan"
    orphan.mkdir()
    (orphan / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.0}\n')  # no config.yaml
    res = load_results([root])
    runs = res.runs.set_index("run_dir")
    assert runs.loc[str(ok[0]), "status"] == "completed"
    for path, says in ((binary, "summary.json: not a JSON object"), (listy, "a JSON list, not an object"),
                       (nan, "metrics.jsonl line 4: NaN literal"), (bad_yaml, "config.yaml: not YAML"),
                       (orphan, "config.yaml: missing")):
        assert runs.loc[str(path.resolve()), "status"] == "corrupt" and says in runs.loc[str(path.resolve()), "error"]
    assert set(res.plotted()["run_dir"]) == {str(ok[0])}  # a NaN never passes for a diverged result
    # status reads the same tree: every run listed, the damaged ones by path
    for path in (binary, listy):
        assert run_state(path)["state"] == "corrupt" and str(path) in run_state(path)["error"]
    assert run_state(orphan)["state"] == "corrupt"
    from lora_lab.cli import main

    assert main(["status", str(root)]) == 1  # something needs attention
    out = capsys.readouterr().out
    assert "corrupt" in out and "orphan" in out and out.count("completed") >= 1
    # analyze goes on, and names each damaged file
    assert main(["analyze", str(root), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("left out, corrupt") == 5 and str(binary / "summary.json") in err


def test_another_checkpoint_or_eval_interval_resumes_the_same_run(small, monkeypatch):
    cfg = small("train.max_steps=6", "train.checkpoint_every=2", "train.eval_every=0")
    other = small("train.max_steps=6", "train.checkpoint_every=3", "train.eval_every=2")
    assert run_dir(cfg) == run_dir(other)
    real_log = RunDir.log

    def preempted_at_step_5(self, row):
        if row.get("step") == 5 and "train_loss" in row:
            raise KeyboardInterrupt
        real_log(self, row)

    monkeypatch.setattr(RunDir, "log", preempted_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    s = train(other)  # relaunched with other intervals: resumes at its step-4 checkpoint
    assert s["status"] == "completed" and train_steps(run_dir(cfg)) == list(range(1, 7))
    assert json.loads((run_dir(cfg) / "meta.json").read_text())["resumed_from_step"] == 4


def _launch_and_kill(args: list[str], rd: RunDir, when: str, rng: np.random.Generator) -> bool:
    """One launch of `lora-lab train`, SIGKILLed at a random moment after its next new step
    (`when="step"`), or while it writes a checkpoint (`when="write"`). True if it was killed."""
    seen = len(train_steps(rd.path)) if rd.metrics_path.exists() else 0
    p = subprocess.Popen([LORA_LAB, "train", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = rd.checkpoint_path.with_suffix(".pt.tmp")
    deadline = time.monotonic() + 300
    try:
        while p.poll() is None and time.monotonic() < deadline:
            if when == "write" and tmp.exists():
                break
            if when == "step" and rd.metrics_path.exists() and len(train_steps(rd.path)) > seen:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.002)
        killed = p.poll() is None
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait(timeout=60)
    return killed


@pytest.mark.slow
def test_a_run_killed_ten_times_ends_as_if_never_interrupted(tmp_path):
    """SIGKILL at random moments, half of them inside checkpoint writes, each followed by a relaunch:
    the checkpoint is always readable, the finished run logs every step once and ends on the same
    loss, bitwise, as a run that was never interrupted."""
    from lora_lab.config import compose

    base = [*SMALL, "data.num_examples=320", "method=full", "optim.lr=3e-4", "train.max_steps=40",
            "train.checkpoint_every=1"]
    killed_args = [*base, f"run.root={tmp_path / 'killed'}"]
    rd = RunDir(run_dir(compose(killed_args)))
    rng = np.random.default_rng(0)
    kills = in_writes = 0
    while kills < 10:
        assert rd.summary() is None, f"the run finished after {kills} kills; make it longer"
        if _launch_and_kill(killed_args, rd, "write" if kills % 2 else "step", rng):
            kills += 1
            in_writes += rd.checkpoint_path.with_suffix(".pt.tmp").exists()
            if rd.checkpoint_path.exists():
                assert load_state(rd.checkpoint_path)["step"] >= 1  # never a torn checkpoint
    assert in_writes >= 3, f"only {in_writes} of {kills} kills landed inside a checkpoint write"
    done = subprocess.run([LORA_LAB, "train", *killed_args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    clean_args = [*base, f"run.root={tmp_path / 'clean'}"]
    assert subprocess.run([LORA_LAB, "train", *clean_args], capture_output=True, timeout=600).returncode == 0
    clean = RunDir(run_dir(compose(clean_args)))
    assert train_steps(rd.path) == list(range(1, 41))
    assert rd.summary()["final_train_loss"] == clean.summary()["final_train_loss"]
    assert [r["train_loss"] for r in rd.metrics() if "train_loss" in r] == \
        [r["train_loss"] for r in clean.metrics() if "train_loss" in r]
