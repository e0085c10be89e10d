"""Sweeps: experiment configs, grid expansion, skip/rerun logic, and local launches through submitit."""

import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
from omegaconf import OmegaConf

from conftest import LORA_LAB, train_steps
from lora_lab import pool, sweep
from lora_lab.config import ConfigError, compose_dict, from_dictconfig

# Shrinks any tiny experiment to seconds per run.
TINY_RUN = ["train.max_steps=2", "data.num_examples=64", "data.eval_size=8", "train.eval_every=0",
            "train.checkpoint_every=0", "logger.progress=none"]


def test_every_experiment_composes_at_both_scales():
    names = sweep.experiment_names()
    for required in ("tiny/rank", "tiny/batch", "tiny/layers", "tiny/invariance", "tiny/capacity",
                     "paper/rank_tulu3_llama8b", "paper/rank_openthoughts3_llama8b", "paper/batch_openthoughts3",
                     "paper/layers_llama8b", "paper/layers_qwen3_30b_a3b"):
        assert required in names
    for name in names:
        master, jobs = sweep.expand_jobs(name)
        assert jobs, name
        assert len({j.path for j in jobs}) == len(jobs), name
        assert all(j.cfg.run.experiment == name for j in jobs), name
        quick = sweep.expand(name, quick=True)
        assert 0 < len(quick) <= len(jobs), name
        if name.startswith("paper/"):
            assert all("/" in j.cfg.model.name for j in jobs), f"{name}: paper scale uses hub models"
        else:
            assert all(j.cfg.model.name.startswith("tiny-") for j in jobs), name


def test_the_tiny_plan_trains_c7_in_tiny_rank_once(tmp_path):
    """C7 reads tiny/rank's runs (the early curves of every rank at one of its LRs), so the tiny plan
    has no early_rank experiment training them again; tiny/rank runs some LR at every LoRA rank with
    every seed, as C7's rule needs."""
    from lora_lab.reproduce import plan

    experiments = plan("tiny", False, [f"run.root={tmp_path}"])
    assert "tiny/rank" in experiments and not [n for n in experiments if n.split("/")[1].startswith("early_rank")]
    lora = [j.cfg for j in experiments["tiny/rank"] if j.cfg.method == "lora"]
    cells = {(c.lora.rank, c.train.seed) for c in lora}
    shared = [lr for lr in {c.optim.lr for c in lora} if {(c.lora.rank, c.train.seed) for c in lora if c.optim.lr == lr} == cells]
    assert shared and {r for r, _ in cells} == {1, 4, 16, 64}


def test_paper_grids_cover_ranks_1_to_512_and_fullft():
    cfgs = sweep.expand("paper/rank_tulu3_llama8b")
    ranks = {c.lora.rank for c in cfgs if c.method == "lora"}
    assert ranks == {1, 2, 4, 8, 16, 32, 64, 128, 256, 512}
    full_lrs = sorted(c.optim.lr for c in cfgs if c.method == "full")
    lora_lrs = sorted({c.optim.lr for c in cfgs if c.method == "lora"})
    assert len(full_lrs) >= 5 and len(lora_lrs) >= 5
    # The grids are centred on a ~10x LoRA/FullFT LR ratio (C2).
    mid = lambda xs: xs[len(xs) // 2]  # noqa: E731
    assert 5 <= mid(lora_lrs) / mid(full_lrs) <= 20


def test_grid_points_arms_and_command_line():
    grid = OmegaConf.create({"params": {"optim.batch_size": "8,32"},
                             "grids": {"lora": {"method": "lora", "lora.rank": "1,4"}, "full": {"method": "full"}}})
    fixed, points = sweep.grid_points(grid, [])
    assert fixed == []
    assert [(a, p) for a, p in points] == [
        ("lora", ["optim.batch_size=8", "method=lora", "lora.rank=1"]),
        ("lora", ["optim.batch_size=8", "method=lora", "lora.rank=4"]),
        ("lora", ["optim.batch_size=32", "method=lora", "lora.rank=1"]),
        ("lora", ["optim.batch_size=32", "method=lora", "lora.rank=4"]),
        ("full", ["optim.batch_size=8", "method=full"]),
        ("full", ["optim.batch_size=32", "method=full"])]
    # An axis named on the command line is replaced where it exists (the FullFT arm has no rank);
    # a plain override of another key is fixed for all; a sweep of another key adds an axis.
    fixed, points = sweep.grid_points(grid, ["lora.rank=16", "train.max_steps=3", "train.seed=0,1", "optim.batch_size=8"])
    assert fixed == ["train.max_steps=3"]
    assert points == [
        ("lora", ["optim.batch_size=8", "method=lora", "lora.rank=16", "train.seed=0"]),
        ("lora", ["optim.batch_size=8", "method=lora", "lora.rank=16", "train.seed=1"]),
        ("full", ["optim.batch_size=8", "method=full", "train.seed=0"]),
        ("full", ["optim.batch_size=8", "method=full", "train.seed=1"])]


def test_arms_selects_grids():
    full = sweep.expand("tiny/rank", arms=["full"])
    assert full and all(c.method == "full" for c in full)
    both = sweep.expand("tiny/rank", arms=["lora", "full"])
    assert len(both) == len(sweep.expand("tiny/rank")) > len(full)
    with pytest.raises(ConfigError, match="arms=ful: no such arm; this experiment has lora, full"):
        sweep.expand("tiny/rank", arms=["ful"])


def test_fast_expansion_equals_hydra_compose():
    for name in ("tiny/rank", "tiny/layers", "tiny/capacity", "paper/layers_qwen3_30b_a3b"):
        master, jobs = sweep.expand_jobs(name, ["train.max_steps=5"])
        assert [from_dictconfig(compose_dict(master + j.overrides)) for j in jobs] == [j.cfg for j in jobs]
        assert all(j.cfg.train.max_steps == 5 for j in jobs)


def test_fullft_is_not_repeated_across_lora_axes(tmp_path):
    grid_file = tmp_path / "experiments" / "t" / "g.yaml"
    grid_file.parent.mkdir(parents=True)
    grid_file.write_text("# @package _global_\nrun:\n  experiment: t/g\nhydra:\n  sweeper:\n    params:\n"
                         "      method: lora,full\n      lora.rank: 1,4\n")
    old = sweep.EXPERIMENTS_DIR
    import lora_lab.config as config

    try:
        sweep.EXPERIMENTS_DIR = config.EXPERIMENTS_DIR = tmp_path / "experiments"
        with pytest.raises(ConfigError, match="lora.rank"):  # method=full with lora.rank=4 is rejected
            sweep.expand("t/g")
    finally:
        sweep.EXPERIMENTS_DIR = config.EXPERIMENTS_DIR = old


@pytest.mark.parametrize("argv, message", [
    (["sweep", "tiny/nope"], "experiment 'tiny/nope': no file experiments/tiny/nope.yaml; choose one of"),
    (["sweep", "tiny/rank", "lora.rnak=4"], "lora.rnak"),
    (["sweep", "tiny/rank", "launcher=pbs"], "launcher=pbs: choose one of local, slurm"),
    (["sweep", "tiny/rank", "cluster=nowhere"], "cluster=nowhere: no profile slurm/nowhere.yaml"),
    (["sweep", "tiny/rank", "max_parallel=0"], "max_parallel=0: expected a positive integer"),
    (["sweep", "tiny/rank", "workers=2"], "workers=2: expected true"),
    (["status", "tiny/rank", "optim.lr=-1"], "optim.lr"),
])
def test_bad_input_one_line_exit_2(argv, message):
    res = subprocess.run([LORA_LAB, *argv, "--dry-run"] if argv[0] == "sweep" else [LORA_LAB, *argv],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_local_sweep_skips_done_and_reruns_failed_or_unfinished(tmp_path):
    root = tmp_path / "runs"
    args = [LORA_LAB, "sweep", "tiny/rank", f"run.root={root}", "lora.rank=1", "optim.lr=3e-3", "train.seed=0",
            "data.max_seq_len=64", "train.checkpoint_every=1", *TINY_RUN]
    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "tiny/rank: 2 runs; 2 pending; 2 to launch" in dry.stdout
    assert not (root / "tiny" / "rank").exists()  # a dry run writes nothing

    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted(p for p in (root / "tiny" / "rank").iterdir() if not p.name.startswith("."))
    assert [r.name.split("_")[2] for r in runs] == ["full", "lora-r1-all-unembed"]
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["status"] == "completed"
        assert train_steps(r) == [1, 2]
    assert (runs[1] / "adapter" / "adapter_model.safetensors").exists()
    sweeps = list((root / "tiny" / "rank" / ".sweeps").iterdir())

    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "2 completed; 0 to launch" in again.stdout
    assert list((root / "tiny" / "rank" / ".sweeps").iterdir()) == sweeps  # nothing launched

    # One run failed, one was killed after step 1 (no summary, checkpoint at step 1).
    full, lora = runs
    summary = json.loads((full / "summary.json").read_text())
    (full / "summary.json").write_text(json.dumps({**summary, "status": "failed", "error": "RuntimeError: boom"}))
    (lora / "summary.json").unlink()
    status = subprocess.run([LORA_LAB, "status", str(root / "tiny" / "rank")], capture_output=True, text=True, timeout=60)
    assert status.returncode == 1
    assert "failed" in status.stdout and "RuntimeError: boom" in status.stdout and "unfinished" in status.stdout

    rerun = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 to launch" in rerun.stdout
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["status"] == "completed"
        assert train_steps(r) == [1, 2]  # no step logged twice
    status = subprocess.run([LORA_LAB, "status", "tiny/rank", f"run.root={root}", "lora.rank=1", "optim.lr=3e-3",
                             "train.seed=0", "data.max_seq_len=64", "train.checkpoint_every=1", *TINY_RUN],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "2 runs: 2 completed" in status.stdout


@pytest.mark.slow
def test_each_tiny_experiment_runs_a_few_steps(tmp_path):
    """One run per arm of every tiny experiment's quick grid, two steps each, in this process."""
    from lora_lab.launch import train

    for name in [n for n in sweep.experiment_names() if n.startswith("tiny/")]:
        _, jobs = sweep.expand_jobs(name, [f"run.root={tmp_path}", *TINY_RUN], quick=True)
        by_arm = {}
        for j in jobs:
            by_arm.setdefault(j.arm, j)
        for arm, job in by_arm.items():
            summary = train(job.cfg)
            assert summary["status"] in ("completed", "diverged"), (name, arm, summary.get("error"))
            assert summary["steps"] <= 2


def test_interrupts_record_the_signal_and_restore_the_handlers():
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be set in the main thread; SIGTERM would end the test run")
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pool._Interrupts() as interrupts:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handlers run in this (the main) thread between bytecodes
    assert interrupts.signum == signal.SIGTERM and interrupts.hurry  # the first decides; a second hurries
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    exc = pool.SweepInterrupted(signal.SIGINT, 1, 3)
    assert isinstance(exc, KeyboardInterrupt) and exc.exit_code == 130
    assert str(exc) == ("interrupted by SIGINT: stopped 1 run in flight, 3 runs never started; "
                        "relaunch the same command to resume")


def _alive(procs):
    import psutil

    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            pass
    return out


def _in_group(pgid):
    import psutil

    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid:
                out.append(p)
        except (OSError, psutil.Error):
            pass
    return _alive(out)


def _wait_for(predicate, timeout_s, what):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"after {timeout_s} s: {what}")


# How the signal comes: Ctrl-C in a terminal reaches every process of the sweep (its process group),
# `kill` the sweep process alone.
@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group, workers", [(signal.SIGINT, True, True), (signal.SIGINT, False, True),
                                                    (signal.SIGTERM, False, True), (signal.SIGINT, True, False)],
                         ids=["ctrl-c", "sigint", "sigterm", "ctrl-c-process-per-run"])
def test_interrupted_local_sweep_stops_its_runs_and_relaunch_resumes(tmp_path, sig, to_group, workers):
    psutil = pytest.importorskip("psutil")
    root = tmp_path / "runs"
    steps = 100  # long enough that the first run is still training when the signal lands
    grid = ["arms=lora", "lora.rank=1,4", "optim.lr=1e-3,3e-3", "train.seed=0"]  # 4 runs
    args = [LORA_LAB, "sweep", "tiny/rank", f"run.root={root}", *grid, f"train.max_steps={steps}",
            "train.checkpoint_every=2", "data.max_seq_len=64", "optim.batch_size=8", "data.num_examples=64",
            "data.eval_size=8", "train.eval_every=0", "logger.progress=none", "max_parallel=1",
            f"workers={str(workers).lower()}"]
    sweep_dir = root / "tiny" / "rank"

    def runs_with_metrics():
        if not sweep_dir.is_dir():
            return []
        return sorted(p for p in sweep_dir.iterdir() if (p / "metrics.jsonl").is_file())

    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err, start_new_session=True)
        try:
            # Started: the first run has logged step 3 (so it has a checkpoint, at step 2, to resume from).
            def three_steps():
                assert proc.poll() is None, "the sweep ended early: " + (tmp_path / "err").read_text()[-3000:]
                return [r for r in runs_with_metrics() if len(train_steps(r)) >= 3]

            started = _wait_for(three_steps, 600, "no run logged 3 steps")
            assert len(started) == 1
            family = _alive(psutil.Process(proc.pid).children(recursive=True))
            # A worker process; or (a process per run) submitit's controller and the run's process.
            assert len(family) >= (1 if workers else 2), family
            if to_group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            t0 = time.monotonic()
            code = proc.wait(timeout=60)
            stop_s = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stderr = (tmp_path / "err").read_text()
    assert code == 128 + sig, stderr[-3000:]
    name = signal.Signals(sig).name
    line = (f"tiny/rank: interrupted by {name}: stopped 1 run in flight, 3 runs never started; "
            "relaunch the same command to resume")
    assert [ln for ln in stderr.splitlines() if "interrupted by" in ln] == [line], stderr[-3000:]
    print(f"stopped {stop_s:.1f} s after {name}")
    # Nothing of the sweep is left running.
    assert not _alive(family), _alive(family)
    assert not _in_group(proc.pid)
    # The run in flight is unfinished, with its checkpoint; the queued runs never started.
    assert runs_with_metrics() == started
    interrupted = started[0]
    assert not (interrupted / "summary.json").exists()
    logged = train_steps(interrupted)
    assert 3 <= len(logged) < steps and logged == list(range(1, len(logged) + 1))
    status = subprocess.run([LORA_LAB, "status", *args[2:]], capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stdout + status.stderr  # no run failed
    assert re.search(r"^4 runs: 1 unfinished, 3 pending$", status.stdout, re.M), status.stdout

    again = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs; 1 unfinished, 3 pending; 4 to launch" in again.stdout
    runs = runs_with_metrics()
    assert len(runs) == 4
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["status"] == "completed", r.name
        assert train_steps(r) == list(range(1, steps + 1)), r.name  # every step once, none twice
    meta = json.loads((interrupted / "meta.json").read_text())
    assert meta["launches"] == 2 and meta["resumed_from_step"] >= 2, meta  # from its checkpoint, not from scratch


def test_time_left_costs_each_run_at_its_own_tasks_measured_pace(tmp_path):
    """The time left of a sweep that mixes RL and SFT runs: once a run of a task has ended, the runs
    of that task left are costed at its measured seconds per unit of work, whatever run_work's
    weights between tasks say; before anything ended or moved, there is nothing to go by."""
    from lora_lab.config import compose
    from lora_lab.slurm import Job
    from lora_lab.sweep import run_work, time_left

    root = f"run.root={tmp_path}"
    rl = [Job([], compose(["task=rl", "data=tiny-math", f"optim.lr={lr}", root, "train.max_steps=40"])) for lr in (1e-4, 3e-4)]
    sft = [Job([], compose([f"optim.lr={lr}", root, "train.max_steps=16"])) for lr in (1e-4, 3e-4, 1e-3, 3e-3)]
    jobs = rl + sft
    pending = {j.path: {"state": "pending"} for j in jobs}
    assert time_left(jobs, pending, elapsed=5.0, since=0.0, parallel=2) is None
    # Both RL runs ended (17 s each), one SFT run ended (4 s), one is half done, two have not started.
    states = dict(pending)
    for j in rl:
        states[j.path] = {"state": "completed", "wall_s": 17.0}
    states[sft[0].path] = {"state": "completed", "wall_s": 4.0}
    states[sft[1].path] = {"state": "running", "step": 8}
    left = time_left(jobs, states, elapsed=40.0, since=0.0, parallel=2)
    assert left == pytest.approx((0.5 + 1 + 1) * 4.0 / 2)  # SFT's pace, whatever RL's weight in run_work
    assert run_work(rl[0].cfg) > 100 * run_work(sft[0].cfg)  # the weights alone would have said ~0 s
    # Only RL runs ended: an SFT run left costs what an ended run took (17 s), not RL's weight per unit.
    only_rl = dict(pending)
    for j in rl:
        only_rl[j.path] = {"state": "completed", "wall_s": 17.0}
    assert time_left(jobs, only_rl, elapsed=20.0, since=0.0, parallel=2) == pytest.approx(4 * 17.0 / 2)
    done = {j.path: {"state": "completed", "wall_s": 1.0} for j in jobs}
    assert time_left(jobs, done, elapsed=60.0, since=0.0, parallel=2) == 0.0
