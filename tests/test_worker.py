"""Sweep workers (lora_lab/worker.py, lora_lab/pool.py run_workers): a run in a worker is the run of
a process of its own, bitwise; a failed run is recorded and the worker goes on; a worker that dies
is replaced and its run retried once, then recorded as failed; Ctrl-C stops the runs in flight and a
relaunch resumes them; SLURM packs run their runs one after another (the packing itself)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import LORA_LAB, SMALL, train_steps
from lora_lab import pool, slurm, sweep, worker
from lora_lab.config import ConfigError, compose
from lora_lab.slurm import Job


def jobs_of(root: Path, *variants: list[str], common: tuple[str, ...] = ()) -> list[Job]:
    return [Job(list(v), compose([*SMALL, f"run.root={root}", *common, *v])) for v in variants]


def metrics(run: Path, key: str) -> list:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines() if key in json.loads(line)]


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_runs_in_one_worker_equal_runs_in_their_own_processes(tmp_path):
    """Three different runs in a row in one worker (LoRA r1 with evals, FullFT, LoRA r4 on the MoE
    model) against `lora-lab train` for each: the same run ids and, bitwise, the same losses,
    gradient norms, eval losses and adapters; the worker keeps no file open from one run to the next."""
    variants = [["method=lora", "lora.rank=1", "train.eval_every=2"], ["method=full", "optim.lr=3e-4"],
                ["model=tiny-moe", "method=lora", "lora.rank=4", "lora.layers=mlp"]]
    common = ("train.max_steps=4", "train.checkpoint_every=2")
    jobs = jobs_of(tmp_path / "worker", *variants, common=common)
    results, fds = [], []

    def on_result(r):
        results.append(r)
        if Path("/proc").is_dir():
            fds.append(open_fds(r["pid"]))  # the worker is between runs: what a run left open shows here

    assert pool.run_workers(jobs, 1, 1, tmp_path / "logs", on_result=on_result) == []
    assert [r["status"] for r in results] == ["completed"] * 3
    assert len({r["pid"] for r in results}) == 1  # one worker ran all three
    if fds:
        assert fds[0] == fds[1] == fds[2], fds

    alone = tmp_path / "alone"
    for v in variants:
        res = subprocess.run([LORA_LAB, "train", *SMALL, f"run.root={alone}", *common, *v], capture_output=True,
                             text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert res.returncode == 0, res.stderr[-2000:]
    for job, r in zip(jobs, results):
        twin = alone / job.cfg.run.experiment / r["run_id"]
        assert job.path.name == r["run_id"] and twin.is_dir()
        for run in (job.path, twin):
            assert json.loads((run / "meta.json").read_text())["torch_threads"] == 1
        for key in ("train_loss", "grad_norm", "eval_loss"):
            assert metrics(job.path, key) == metrics(twin, key), (r["run_id"], key)  # exact float equality
        assert len(metrics(job.path, "train_loss")) == 4
        if job.cfg.method == "lora":
            assert ((job.path / "adapter" / "adapter_model.safetensors").read_bytes()
                    == (twin / "adapter" / "adapter_model.safetensors").read_bytes())
    assert len(metrics(jobs[0].path, "eval_loss")) == 2  # step 2 and the final one


def test_a_failed_run_is_recorded_and_the_worker_goes_on(tmp_path):
    """A real failure inside a run: its adapter directory cannot be made (a file of that name is in
    the way), so the run fails after training, at the export. It is recorded as `lora-lab train`
    records it (summary.json: failed, error, traceback), reported with its record, and the same worker
    then completes the next run."""
    jobs = jobs_of(tmp_path / "runs", ["lora.rank=1"], ["lora.rank=4"], common=("train.max_steps=2",))
    jobs[0].path.mkdir(parents=True)
    (jobs[0].path / "adapter").write_text("in the way")
    results = []
    lines = pool.run_workers(jobs, 1, 1, tmp_path / "logs", on_result=results.append)
    failed = json.loads((jobs[0].path / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith(("FileExistsError", "NotADirectoryError"))
    assert "export_peft" in failed["traceback"]
    assert [r["status"] for r in results] == ["failed", "completed"] and results[0]["code"] == 1
    assert results[0]["record"] == str(jobs[0].path / "summary.json")
    assert results[0]["pid"] == results[1]["pid"]
    assert lines == [f"{jobs[0].run_id}: failed: {failed['error']} (traceback in {jobs[0].path / 'summary.json'})"]
    assert json.loads((jobs[1].path / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_worker_that_dies_is_replaced_and_its_run_retried_once(tmp_path):
    """SIGKILL the worker while it trains: a new worker resumes the run from its checkpoint and
    completes it, every step logged once. Killed again on the retry, the run is recorded as failed
    (worker died twice), and the rest of the queue still runs."""
    steps = 40
    jobs = jobs_of(tmp_path / "runs", ["lora.rank=1"], ["lora.rank=4"], ["method=full"],
                   common=(f"train.max_steps={steps}", "train.checkpoint_every=2"))
    # (run, its launch): kill the worker once that launch of the run has logged 3 steps.
    plan = [(jobs[0].path, 1), (jobs[1].path, 1), (jobs[1].path, 2)]
    killed: list[str] = []
    done = threading.Event()

    def launches(path):
        try:
            return json.loads((path / "meta.json").read_text())["launches"]
        except (OSError, ValueError, KeyError):
            return 0

    def live_worker():
        import psutil

        for c in psutil.Process().children():
            try:
                if c.status() != psutil.STATUS_ZOMBIE and "lora_lab.worker" in " ".join(c.cmdline()):
                    return c.pid
            except psutil.Error:
                pass
        return None

    def killer():
        while plan and not done.is_set():
            path, launch = plan[0]
            if launches(path) == launch and len(train_steps(path)) >= 3:
                pid = live_worker()
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(path.name)
                    plan.pop(0)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    results = []
    try:
        lines = pool.run_workers(jobs, 1, 1, tmp_path / "logs", on_result=results.append)
    finally:
        done.set()
        t.join()
    assert killed == [jobs[0].run_id, jobs[1].run_id, jobs[1].run_id]
    # The first run: killed once, resumed by the next worker, complete with every step once.
    assert json.loads((jobs[0].path / "summary.json").read_text())["status"] == "completed"
    assert train_steps(jobs[0].path) == list(range(1, steps + 1))
    meta = json.loads((jobs[0].path / "meta.json").read_text())
    assert meta["launches"] == 2 and meta["resumed_from_step"] >= 2
    # The second: killed on its retry too, recorded as failed and reported; the third completed.
    failed = json.loads((jobs[1].path / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"].startswith("WorkerDied: ")
    assert "killed by SIGKILL" in failed["error"]
    assert len(lines) == 1 and lines[0].startswith(f"{jobs[1].run_id}: failed: its worker died (killed by SIGKILL) 2 times")
    assert json.loads((jobs[2].path / "summary.json").read_text())["status"] == "completed"
    assert [(r["run_id"], r["status"]) for r in results] == [
        (jobs[0].run_id, "worker died"), (jobs[0].run_id, "completed"), (jobs[1].run_id, "worker died"),
        (jobs[1].run_id, "worker died"), (jobs[2].run_id, "completed")]
    assert len({r["pid"] for r in results if r.get("pid")}) == 2  # the runs that ended ran on two workers


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_runs_and_a_relaunch_resumes_them(tmp_path):
    """Two workers; SIGINT to the sweep once two short runs have completed and two long ones are in
    flight: both stay unfinished (exit 130, the pool's message), nothing of the sweep is left
    running, and the same command then resumes the two and leaves the finished ones alone."""
    psutil = pytest.importorskip("psutil")
    root = tmp_path / "runs"
    long = 600
    grid = [*SMALL, f"run.root={root}", "lora.rank=1,4", "optim.lr=3e-3", "train.seed=0", f"train.max_steps=6,{long}",
            "train.checkpoint_every=2"]
    args = [LORA_LAB, "sweep", "tiny/rank", "arms=lora", *grid, "max_parallel=2"]
    _, jobs = sweep.expand_jobs("tiny/rank", grid, arms=["lora"])
    short, longs = [j for j in jobs if j.cfg.train.max_steps == 6], [j for j in jobs if j.cfg.train.max_steps == long]

    def ready():
        return (all((j.path / "summary.json").is_file() for j in short)
                and all((j.path / "metrics.jsonl").is_file() and len(train_steps(j.path)) >= 3 for j in longs))

    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            t0 = time.monotonic()
            while not ready():
                assert proc.poll() is None and time.monotonic() - t0 < 600, (tmp_path / "err").read_text()[-3000:]
                time.sleep(0.1)
            family = psutil.Process(proc.pid).children(recursive=True)
            assert len([p for p in family if "lora_lab.worker" in " ".join(p.cmdline())]) == 2
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stderr = (tmp_path / "err").read_text()
    assert code == 130, stderr[-3000:]
    assert ("tiny/rank: interrupted by SIGINT: stopped 2 runs in flight, 0 runs never started; relaunch the same "
            "command to resume") in stderr.splitlines()
    assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for j in longs:
        assert not (j.path / "summary.json").exists()
        assert 3 <= len(train_steps(j.path)) < long
    finished = {j.path: (j.path / "summary.json").stat().st_mtime_ns for j in short}

    again = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs; 2 completed, 2 unfinished; 2 to launch" in again.stdout
    for j in longs:
        assert json.loads((j.path / "summary.json").read_text())["status"] == "completed"
        assert train_steps(j.path) == list(range(1, long + 1))  # resumed: every step once
        meta = json.loads((j.path / "meta.json").read_text())
        assert meta["launches"] == 2 and meta["resumed_from_step"] >= 2
    for j in short:  # finished before the interrupt: not run again
        assert (j.path / "summary.json").stat().st_mtime_ns == finished[j.path]
        assert json.loads((j.path / "meta.json").read_text())["launches"] == 1


def test_baseline_puts_back_what_a_run_changed(tmp_path):
    import logging
    import warnings

    import torch

    base = worker.Baseline()
    threads = torch.get_num_threads()
    handler = logging.FileHandler(tmp_path / "leak.log")
    try:
        os.environ["LORA_LAB_TEST_LEAK"] = "1"
        os.chdir(tmp_path)
        torch.set_default_dtype(torch.float64)
        torch.use_deterministic_algorithms(True)
        torch.set_grad_enabled(False)
        torch.set_float32_matmul_precision("medium")
        logging.getLogger("lora_lab_test_leak").addHandler(handler)
        warnings.simplefilter("error")
        from lora_lab.runs import tiny_weights_fingerprint

        tiny_weights_fingerprint("tiny-llama")
        assert tiny_weights_fingerprint.cache_info().currsize
        changed = base.restore(threads=1)
        assert {"environment", "working directory", "torch default dtype", "torch deterministic algorithms",
                "torch grad mode", "torch float32 matmul precision", "warning filters"} <= set(changed), changed
        assert "LORA_LAB_TEST_LEAK" not in os.environ and os.getcwd() == base.cwd
        assert torch.get_default_dtype() == torch.float32 and torch.is_grad_enabled()
        assert not torch.are_deterministic_algorithms_enabled() and torch.get_float32_matmul_precision() == "highest"
        assert not logging.getLogger("lora_lab_test_leak").handlers and handler.stream is None  # removed and closed
        assert tiny_weights_fingerprint.cache_info().currsize == 0
        assert torch.get_num_threads() == 1
    finally:
        base.restore(threads=threads)


def test_packs_of_runs_for_slurm_jobs(tmp_path):
    _, jobs = sweep.expand_jobs("tiny/rank", [f"run.root={tmp_path}", "train.seed=0"])
    assert len(jobs) == 25
    packs = slurm.pack_jobs(jobs, 4)
    assert [len(p) for p in packs] == [4, 4, 4, 4, 4, 4, 1]
    assert [j for p in packs for j in p] == jobs  # every run once, in the grid's order
    assert slurm.pack_jobs(jobs, 1) == [[j] for j in jobs]
    # Runs sent with different launcher settings never share a job.
    mixed = jobs[:3] + [Job(j.overrides, j.cfg, j.arm, j.master, ("hydra.launcher.tasks_per_node=2",)) for j in jobs[3:5]]
    assert [[jobs.index(j) if j in jobs else "x" for j in p] for p in slurm.pack_jobs(mixed, 4)] == [[0, 1, 2], ["x", "x"]]
    assert slurm.runs_per_job(None, "p") == 1 and slurm.runs_per_job(3, "p") == 3 and slurm.runs_per_job("2", "p") == 2
    for bad in (0, -1, "two", 1.5, True):
        with pytest.raises(ConfigError, match="runs_per_job=.*expected a positive integer"):
            slurm.runs_per_job(bad, "slurm/x.yaml")


def test_a_pack_runs_its_runs_one_after_another_in_this_process(tmp_path):
    """What a packed SLURM job runs (worker.run_pack): each run as `lora-lab train` runs it; a
    finished run is skipped when the (requeued) job runs the pack again."""
    cfgs = [j.cfg for j in jobs_of(tmp_path, ["lora.rank=1"], ["method=full"], common=("train.max_steps=2",))]
    first = worker.run_pack(cfgs, threads=1)
    assert [r["status"] for r in first] == ["completed", "completed"] and [r["code"] for r in first] == [0, 0]
    again = worker.run_pack(cfgs, threads=1)
    assert [r["status"] for r in again] == ["completed", "completed"]
    for cfg in cfgs:
        run = tmp_path / cfg.run.experiment / first[cfgs.index(cfg)]["run_id"]
        assert train_steps(run) == [1, 2] and json.loads((run / "meta.json").read_text())["launches"] == 1


def test_workers_that_cannot_start_stop_the_sweep_with_one_error(tmp_path, monkeypatch):
    """A worker that ends before it is ready (here: not Python at all) is started once more; then the
    sweep stops with one error naming its log, and no run was taken: all stay pending."""
    jobs = jobs_of(tmp_path / "runs", ["lora.rank=1"], ["lora.rank=4"])
    monkeypatch.setattr(pool.sys, "executable", "/bin/false")
    with pytest.raises(pool.WorkerError, match=r"ended before it was ready \(exit code 1\), twice; its log .*worker-0.log"):
        pool.run_workers(jobs, 1, 1, tmp_path / "logs")
    assert not any(j.path.exists() for j in jobs)


def test_a_bad_runs_per_job_in_a_profile_stops_before_anything_runs(tmp_path, monkeypatch):
    (tmp_path / "p.yaml").write_text("partition: debug\nruns_per_job: 0\n")
    monkeypatch.setattr(slurm, "SLURM_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"^slurm/p.yaml: runs_per_job=0: expected a positive integer"):
        slurm.cluster_overrides("p")
    (tmp_path / "p.yaml").write_text("partition: debug\nruns_per_job: 3\n")
    assert "++hydra.launcher.runs_per_job=3" in slurm.cluster_overrides("p")


def test_a_worker_at_the_end_of_its_input_flushes_what_is_pending_before_its_quick_exit(tmp_path):
    """The end of input skips Python's own shutdown (os._exit): what it would have flushed is flushed
    first, so an answer written but not flushed and a buffered log record are not lost."""
    log = tmp_path / "records.log"
    code = f"""
import logging, logging.handlers, os, sys
from lora_lab import worker
target = logging.FileHandler({str(log)!r})
logging.getLogger("a-run").addHandler(logging.handlers.MemoryHandler(capacity=100, target=target))
logging.getLogger("a-run").warning("a record the memory handler holds")
answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
answers.write("an answer not flushed yet\\n")
worker._quick_exit(answers)
print("never reached")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "an answer not flushed yet\n"
    assert log.read_text() == "a record the memory handler holds\n"
