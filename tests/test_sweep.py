"""Sweeps: experiment configs, grid expansion, skip/rerun logic, and local launches through submitit."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from omegaconf import OmegaConf

from conftest import LORA_LAB, train_steps
from lora_lab import dispatch, pool, progress, sweep
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


def test_experiments_beyond_the_paper_run_when_asked_and_share_their_runs(tmp_path):
    """tiny/width and tiny/alpha are not in a plain reproduce (its budget is the claims'), run with
    --only or --beyond, and train their shared runs once: tiny/alpha's alpha-32 rank-16 and FullFT runs
    are tiny/width's hidden-128 runs of seed 0."""
    from lora_lab.reproduce import plan

    root = [f"run.root={tmp_path}"]
    assert not {"tiny/width", "tiny/alpha"} & set(plan("tiny", False, root))
    assert {"tiny/width", "tiny/alpha", "tiny/rank"} <= set(plan("tiny", False, root, beyond=True))
    both = plan("tiny", False, root, only=["tiny/width", "tiny/alpha"])
    assert set(both) == {"tiny/width", "tiny/alpha"}
    width = {j.path.name: j.cfg for j in both["tiny/width"]}
    alpha = {j.path.name: j.cfg for j in both["tiny/alpha"]}
    shared = set(width) & set(alpha)
    assert {(c.method, c.lora.rank if c.method == "lora" else None) for n, c in alpha.items() if n in shared} == \
        {("lora", 16), ("full", None)}
    assert all(alpha[n].train.seed == 0 and alpha[n].model.name == "tiny-llama" for n in shared)
    hidden = {c.model.name: c.lora.rank for c in width.values() if c.method == "lora"}
    assert hidden == {"tiny-llama-w64": 8, "tiny-llama": 16, "tiny-llama-w256": 32}  # rank hidden / 8
    for name, jobs in both.items():
        for arm in {j.arm for j in jobs}:
            assert len({j.cfg.optim.lr for j in jobs if j.arm == arm}) >= 5, (name, arm)
        assert all(j.cfg.optim.batch_size == 8 and j.cfg.data.num_examples == 2048 for j in jobs)


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
    # quick's lora.rank is an axis of the LoRA arm only, also when that arm is not selected
    quick_full = sweep.expand("tiny/batch", quick=True, arms=["full"])
    assert quick_full and all(c.method == "full" for c in quick_full)


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
    weights between tasks say; a task none of whose runs has ended or been timed is not costed by
    another task's runs; before anything ended or moved, there is nothing to go by."""
    from lora_lab.config import compose
    from lora_lab.slurm import Job
    from lora_lab.progress import estimate_left, run_work, time_left

    root = f"run.root={tmp_path}"
    rl = [Job([], compose(["task=rl", "data=tiny-math", f"optim.lr={lr}", root, "train.max_steps=40"])) for lr in (1e-4, 3e-4)]
    sft = [Job([], compose([f"optim.lr={lr}", root, "train.max_steps=16"])) for lr in (1e-4, 3e-4, 1e-3, 3e-3)]
    jobs = rl + sft
    pending = {j.path: {"state": "pending"} for j in jobs}
    assert time_left(jobs, pending, since=0.0, parallel=2) is None
    # Both RL runs ended (17 s each), one SFT run ended (4 s), one is half done, two have not started.
    states = dict(pending)
    for j in rl:
        states[j.path] = {"state": "completed", "wall_s": 17.0, "step": 40}
    states[sft[0].path] = {"state": "completed", "wall_s": 4.0, "step": 16}
    states[sft[1].path] = {"state": "running", "step": 8}
    # SFT's pace (4 s a run), whatever RL's weight in run_work: the half-done run (2 s) and a queued one
    # (4 s) on one slot, the other queued run (4 s) on the other, so the last ends in 6 s.
    assert time_left(jobs, states, since=0.0, parallel=2) == pytest.approx(6.0)
    assert run_work(rl[0].cfg) > 100 * run_work(sft[0].cfg)  # the weights alone would have said ~0 s
    # Only RL runs ended: the SFT runs are not costed at RL's 17 s a run; with none timed, nothing is said.
    only_rl = dict(pending)
    for j in rl:
        only_rl[j.path] = {"state": "completed", "wall_s": 17.0, "step": 40}
    assert estimate_left(jobs, only_rl, 0.0, 2) == (None, 4)
    done = {j.path: {"state": "completed", "wall_s": 1.0, "step": 16} for j in jobs}
    assert time_left(jobs, done, since=0.0, parallel=2) == 0.0


def test_time_left_with_the_longest_runs_first_and_runs_of_different_lengths(tmp_path):
    """Reproduce's order, longest first: the long RL runs go first and end first; the SFT runs left
    are then paced by the SFT runs in flight (their measured seconds per step), not by the RL runs'
    length; a run of 64 steps costs four times one of 16; a run of epochs takes the steps a completed
    run of the same data and batch took (not run_steps's guess); and the last run to end, not the sum
    shared out over the slots, sets the time left."""
    from lora_lab.config import compose
    from lora_lab.slurm import Job
    from lora_lab.progress import estimate_left, run_steps, time_left

    root = f"run.root={tmp_path}"
    rl = [Job([], compose(["task=rl", "data=tiny-math", f"optim.lr={lr}", root, "train.max_steps=40"])) for lr in (1e-4, 3e-4)]
    short = [Job([], compose([f"optim.lr={lr}", root, "train.max_steps=16"])) for lr in (1e-4, 3e-4)]
    long = Job([], compose(["optim.lr=1e-3", root, "train.max_steps=64"]))
    jobs = rl + [long] + short
    states = {j.path: {"state": "completed", "wall_s": 300.0, "step": 40} for j in rl}
    states[long.path] = {"state": "running", "step": 10}
    states[short[0].path] = {"state": "running", "step": 4}
    states[short[1].path] = {"state": "pending"}
    rates = {long.path: 0.5, short[0].path: 0.25}  # seconds per step, as the watcher measured them
    # In flight: the long run 54 steps x 0.5 s = 27 s, the short one 12 x 0.25 = 3 s; the queued
    # short run (same kind as the one in flight: 0.25 s a step) follows on the slot free first: 3 + 4 s.
    assert time_left(jobs, states, parallel=2, rates=rates) == pytest.approx(27.0)
    # Without the long run, on one slot: the short one in flight (3 s), then the queued one (4 s).
    del states[long.path], rates[long.path]
    assert time_left(rl + short, states, parallel=1, rates=rates) == pytest.approx(7.0)
    assert time_left(rl + short, states, parallel=2, rates=rates) == pytest.approx(4.0)
    # Per step, not per run: the 64-step run, queued, costs 4x a 16-step run at the completed run's pace.
    ended = {short[0].path: {"state": "completed", "wall_s": 8.0, "step": 16}, long.path: {"state": "pending"}}
    assert time_left([short[0], long], ended, parallel=1) == pytest.approx(32.0)
    # A run of epochs (max_steps null, all of the data): its steps are those a completed twin took.
    epochs = [Job([], compose([f"optim.lr={lr}", root, "data.num_examples=null"])) for lr in (1e-4, 3e-4)]
    assert run_steps(epochs[0].cfg) == 10_000 // 32  # the guess without the data set's size
    twin = {epochs[0].path: {"state": "completed", "wall_s": 20.0, "step": 100}, epochs[1].path: {"state": "pending"}}
    assert estimate_left(epochs, twin, 0.0, 1) == (pytest.approx(20.0), 0)


def test_the_progress_line_refreshes_with_the_steps_of_the_runs_in_flight(tmp_path):
    """_Watch prints a line when the counts change and, while runs are in flight, at least every
    refresh_s with the steps they have logged and the time left from their measured pace (a fake
    clock: tick(now))."""
    import io

    from conftest import make_config, write_run
    from lora_lab.runs import RunDir
    from lora_lab.slurm import Job
    from lora_lab.progress import _Watch

    cfgs = [make_config(tmp_path, "tiny/rank", lr=lr, steps=20) for lr in (1e-3, 3e-3)]
    jobs = [Job([], c) for c in cfgs]
    running = write_run(cfgs[0], [3.0] * 4, status=None)
    lock = RunDir(running)
    lock.lock()  # a live process holds it: running
    out = io.StringIO()
    try:
        watch = _Watch(jobs, refresh_s=30.0, out=out, workers=1)
        first = watch.tick(now=0.0)
        assert first is not None and "0/2 done: 1 running, 1 pending" in first and "running 4/20 steps" in first
        with open(running / "metrics.jsonl", "a") as f:
            f.writelines(json.dumps({"step": s, "train_loss": 2.0}) + "\n" for s in range(5, 9))
        assert watch.tick(now=10.0) is None  # same counts, refreshed less than 30 s ago
        line = watch.tick(now=30.0)
        # 4 steps in 30 s: 7.5 s a step; 12 steps left of this run, then 20 of the queued one, on one worker.
        assert line is not None and "running 8/20 steps" in line, line
        assert f"~{(12 + 20) * 7.5 / 60:.1f} min left (1 worker)" in line, line
        assert out.getvalue().splitlines() == [first, line]
    finally:
        lock.unlock()
    # The counts change: a line at once.
    write_run(cfgs[1], [1.0] * 20)
    assert "1/2 done: 1 completed, 1 unfinished" in watch.tick(now=31.0)


def _hand_runs(tmp_path, n=3):
    from conftest import make_config
    from lora_lab.slurm import Job

    return [Job([], make_config(tmp_path, "tiny/rank", lr=lr, steps=20)) for lr in (1e-3, 3e-3, 1e-2)[:n]]


def test_squeue_names_the_runs_of_lora_labs_jobs_and_status_shows_them_queued(tmp_path, monkeypatch, capsys):
    """A job's comment names the record of its packs (percent-encoded) and its first pack; squeue's
    array elements map to their packs' runs. status lists runs held by live jobs as queued (also
    those whose directories do not exist yet), with the job; wait times out while they are."""
    from conftest import write_run
    from lora_lab import slurm
    from lora_lab.slurm import QueuedJob
    from lora_lab.status import status_main, wait_main

    jobs = _hand_runs(tmp_path)
    record = tmp_path / "tiny" / "rank" / ".sweeps" / "a b" / "slurm-0.json"  # where a launch writes it
    slurm.write_record(record, [[jobs[0]], [jobs[1], jobs[2]]])
    comment = slurm.job_comment(record, 0)
    assert " " not in comment and comment.endswith("#0")
    text = (f"70_0|COMPLETING|node3|0|{slurm.job_comment(record, 1)}\n"  # over: it holds its runs no more
            f"77_0|PENDING|(Priority)|0|{comment}\n77_1|RUNNING|node3|1|{comment}\n"
            "12|RUNNING|node1|N/A|someone else's job\n")
    queue = slurm.parse_queue(text)
    assert queue == {jobs[0].path: QueuedJob("77_0", "PENDING", "(Priority)"),
                     jobs[1].path: QueuedJob("77_1", "RUNNING", "node3"), jobs[2].path: QueuedJob("77_1", "RUNNING", "node3")}
    # A pack submitted alone (a plain job, no array index) from pack 1 of the record.
    assert slurm.parse_queue(f"80|PENDING|(Resources)|N/A|{slurm.job_comment(record, 1)}\n") == {
        jobs[1].path: QueuedJob("80", "PENDING", "(Resources)"), jobs[2].path: QueuedJob("80", "PENDING", "(Resources)")}

    write_run(jobs[2].cfg, [3.0] * 4, status=None)  # its job started it once: unfinished, not locked
    elsewhere = _hand_runs(tmp_path / "other", 1)[0]
    write_run(elsewhere.cfg, [3.0] * 4, status=None)

    def no_squeue(timeout=None):
        raise AssertionError("squeue asked where lora-lab submitted no SLURM job")

    monkeypatch.setattr(progress, "queued_runs", no_squeue)
    assert status_main([str(tmp_path / "other")]) == 0
    assert "1 runs: 1 unfinished" in capsys.readouterr().out
    monkeypatch.setattr(progress, "queued_runs", lambda timeout=None: (queue, None))
    where = str(tmp_path / "tiny" / "rank")
    assert status_main([where]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 runs: 3 queued"), out
    assert "SLURM job 77_0 PENDING (Priority)" in out and "SLURM job 77_1 RUNNING on node3" in out
    assert wait_main([where, "--timeout", "0"]) == 1
    assert "3 runs still queued or running after 0 s" in capsys.readouterr().err
    # The jobs have ended: nothing is queued, and every run completed.
    monkeypatch.setattr(progress, "queued_runs", lambda timeout=None: ({}, None))
    for j in jobs:
        shutil.rmtree(j.path, ignore_errors=True)
        write_run(j.cfg, [2.0] * 20)
    assert wait_main([where, "--timeout", "0"]) == 0
    assert "3 runs: 3 completed" in capsys.readouterr().out


def test_a_slurm_launch_skips_queued_runs_and_a_detached_one_returns_at_once(tmp_path, monkeypatch, capsys):
    """Runs that a live SLURM job holds are not submitted again (and the launch says which, with the
    job); a detached launch hands the rest to launch(detach=True), with the runs each job copies to
    the experiments that share them, and returns without waiting."""
    from lora_lab.slurm import QueuedJob

    jobs = _hand_runs(tmp_path)
    calls = []
    monkeypatch.setattr(progress, "queued_runs", lambda timeout=None: ({jobs[0].path: QueuedJob("9_0", "PENDING", "(Priority)")}, None))
    monkeypatch.setattr(dispatch, "launch", lambda todo, args, cap, **kw: calls.append((todo, kw)) or [])
    assert dispatch.launch_jobs("t", jobs, tmp_path, "slurm", "local", progress=False, detach=True) == 0
    out = capsys.readouterr().out
    assert "t: 3 runs; 1 queued, 2 pending; 2 to launch" in out
    assert "1 run is held by SLURM jobs that are queued or running (squeue): not submitted again" in out
    assert f"{jobs[0].run_id}: SLURM job 9_0 PENDING (Priority)" in out
    ((todo, kw),) = calls
    assert [j.run_id for j in todo] == [j.run_id for j in jobs[1:]] and kw == {"detach": True, "copies": {}}
    with pytest.raises(ConfigError, match="--detach with launcher=local: a detached launch needs launcher=slurm"):
        sweep.sweep("tiny/rank", [f"run.root={tmp_path}"], detach=True)


def test_a_detached_job_records_its_runs_and_copies_them_to_the_experiments_that_share_them(tmp_path):
    """SlurmRuns, what a detached SLURM job runs, in this process: it trains its runs, writes a line
    per run to the sweep's runs.jsonl, and copies a finished run into the other experiment that has
    it (what the sweep's process did after the jobs it waited for), so nothing is left to a driver."""
    from lora_lab.config import compose
    from lora_lab.dispatch import SlurmRuns
    from lora_lab.runs import run_dir, run_id, run_state

    base = [f"run.root={tmp_path}", "method=lora", "lora.rank=1", "optim.lr=3e-3", *TINY_RUN, "data.max_seq_len=64",
            "optim.batch_size=8"]
    mine, twin = compose([*base, "run.experiment=tiny/rank"]), compose([*base, "run.experiment=tiny/batch"])
    log = tmp_path / "runs.jsonl"
    result = SlurmRuns(str(log))([mine.to_dict()], [[twin.to_dict()]])
    assert [r["status"] for r in result["runs"]] == ["completed"]
    copied = run_dir(twin)
    assert run_state(copied)["state"] == "completed"
    assert json.loads((copied / "meta.json").read_text())["copied_from"] == str(run_dir(mine))
    (line,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert line["run_id"] == run_id(mine) and line["status"] == "completed" and line["copied_to"] == [str(copied)]


def test_wait_is_a_light_command(tmp_path):
    """`lora-lab wait` imports neither torch nor transformers; with nothing queued or running it
    returns at once: 1, the runs are pending."""
    from test_light_commands import PROBE

    out = subprocess.run([sys.executable, "-c", PROBE, "wait", "tiny/rank", "lora.rank=1", "optim.lr=3e-3", "train.seed=0",
                          f"run.root={tmp_path}", "--timeout", "0"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rc": 1, "heavy": []}, out.stderr[-2000:]
    assert "2 runs: 2 pending" in out.stdout
