"""`lora-lab time-steps` (lora_lab/steptime.py): the arms of an experiment timed interleaved in one
process, the file it writes, and C6 reading it beside the counted FLOPs."""

import json
import subprocess

from conftest import FULL_GRID, LORA_GRID, LORA_LAB, make_config, u_curve_losses, write_run

from lora_lab import steptime, sweep
from lora_lab.report import analyze

SMALL = ["train.seed=0", "lora.rank=1,4", "optim.lr=1e-3", "data.num_examples=64", "optim.batch_size=8",
         "data.max_seq_len=64", "data.eval_size=8"]


def test_one_learner_per_arm_from_its_lowest_seed_and_lr(tmp_path):
    _, jobs = sweep.expand_jobs("tiny/rank", [f"run.root={tmp_path}", "train.seed=0,1", "lora.rank=1,4",
                                              "optim.lr=1e-3,3e-3"])
    chosen = steptime.arms_to_time(jobs)
    assert sorted((j.cfg.method, j.cfg.lora.rank if j.cfg.method == "lora" else 0) for j in chosen) == [
        ("full", 0), ("lora", 1), ("lora", 4)]
    assert {(j.cfg.train.seed, j.cfg.optim.lr) for j in chosen} == {(0, 1e-3)}


def test_time_steps_writes_every_arms_median_and_ratio_to_fullft(tmp_path):
    res = subprocess.run([LORA_LAB, "time-steps", "tiny/rank", f"run.root={tmp_path}", *SMALL, "--steps", "2",
                          "--rounds", "2", "--warmup", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads((tmp_path / "tiny" / "rank" / "step_times.json").read_text())
    assert (doc["steps"], doc["rounds"], doc["warmup"], doc["torch_threads"]) == (2, 2, 1, 1)
    arms = {(a["method"], a["rank"]): a for a in doc["arms"]}
    assert set(arms) == {("full", None), ("lora", 1), ("lora", 4)}
    assert arms[("full", None)]["ratio_to_full"] == 1.0
    for a in arms.values():
        assert a["steps_timed"] == 4 and 0 < a["q1_s"] <= a["step_time_s"] <= a["q3_s"]
        assert a["ratio_to_full"] == a["step_time_s"] / arms[("full", None)]["step_time_s"]
    assert arms[("lora", 1)]["unembed"] is True and arms[("lora", 1)]["layers"] == "all"
    assert "ratio to FullFT" in res.stdout and "time-steps tiny/rank" in doc["command"]


def test_bad_options_exit_2_with_one_line(tmp_path):
    res = subprocess.run([LORA_LAB, "time-steps", "tiny/rank", f"run.root={tmp_path}", "--rounds", "0"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--rounds=0: expected an integer >= 1" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_c6_prints_the_interleaved_step_times_where_the_experiment_has_them(tmp_path):
    root = tmp_path / "runs"
    lora = [write_run(make_config(root, "tiny/rank", rank=4, lr=lr), u_curve_losses(lr, 4)) for lr in LORA_GRID]
    full = [write_run(make_config(root, "tiny/rank", "full", lr=lr), u_curve_losses(lr, None)) for lr in FULL_GRID]
    # Without a step_times.json: the runs' own step times (every run wrote 0.1 s), "per run".
    c6 = analyze([root], tmp_path / "out", progress=False)["verdicts"]["C6"][0]
    assert "step time measured (per run)" in c6["measured"] and "step time 1.00" in c6["measured"]
    (root / "tiny" / "rank" / steptime.FILE).write_text(json.dumps({"arms": [
        {"run_id": lora[0].name, "method": "lora", "rank": 4, "layers": "all", "step_time_s": 0.09,
         "steps_timed": 40, "ratio_to_full": 0.75},
        {"run_id": full[0].name, "method": "full", "rank": None, "layers": None, "step_time_s": 0.12,
         "steps_timed": 40, "ratio_to_full": 1.0}]}))
    c6 = analyze([root], tmp_path / "out2", progress=False)["verdicts"]["C6"][0]
    assert "step time measured (interleaved in one process)" in c6["measured"] and "step time 0.75" in c6["measured"]
    table = (tmp_path / "out2" / "tiny" / "rank" / "step_time.csv").read_text()
    assert "interleaved in one process" in table and "0.75" in table
