"""Integration test on a real one-node SLURM (slurm/local_cluster.sh): a shrunk tiny grid through
`lora-lab sweep ... launcher=slurm`, a job cancelled mid-run and completed by a relaunch, and a
second launch that submits nothing (sacct).

Needs root (it installs and starts the daemons). Skipped otherwise, unless LORA_LAB_REQUIRE_SLURM=1
(CI sets it): then a cluster that cannot be brought up fails the test.
"""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import LORA_LAB, train_steps

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SHRINK = ["train.seed=0", "data.num_examples=64", "data.eval_size=8", "data.max_seq_len=64", "optim.batch_size=8",
          "train.eval_every=0", "logger.progress=lines", "logger.progress_every_s=0"]


@pytest.fixture(scope="module")
def cluster():
    required = os.environ.get("LORA_LAB_REQUIRE_SLURM") == "1"
    if os.geteuid() != 0 and not required:
        pytest.skip("the local SLURM cluster needs root (set LORA_LAB_REQUIRE_SLURM=1 to make this a failure)")
    res = subprocess.run(["bash", str(REPO / "slurm" / "local_cluster.sh"), "up"], capture_output=True, text=True,
                         timeout=900)
    if res.returncode != 0:
        message = f"slurm/local_cluster.sh up failed:\n{res.stderr[-3000:]}"
        if required:
            pytest.fail(message)
        pytest.skip(message)
    yield


def _sacct_jobs(since: str) -> list[str]:
    """The jobs submitted at or after `since` (sacct -S also lists older jobs still running then, such
    as the last job of the previous test)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-S", since, "-o", "JobID,JobName,State,Submit"], capture_output=True,
                         text=True, check=True).stdout
    return [line for line in out.splitlines() if line.strip() and line.rsplit("|", 1)[-1] >= since]


def _sweep(root: Path, *extra: str, background: bool = False):
    args = [LORA_LAB, "sweep", "tiny/rank", "launcher=slurm", "cluster=local", f"run.root={root}", *SHRINK, *extra]
    if background:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, capture_output=True, text=True, timeout=900)


# Long enough that a cancel or a preemption signal sent after step 7 lands before the run ends,
# even on a fast machine (about 80 ms a step on a 2-core laptop, a third of that on a fast CI node).
LONG_STEPS = 400


def test_sweep_on_slurm_cancel_relaunch_and_no_resubmission(cluster, tmp_path):
    root = tmp_path / "runs"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    grid = ["lora.rank=1,4", "optim.lr=3e-3", "train.max_steps=3", "train.checkpoint_every=0"]

    # 1. A shrunk tiny/rank grid (LoRA r1, r4, FullFT) completes through submitit_slurm.
    res = _sweep(root, *grid)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    runs = sorted(p for p in (root / "tiny" / "rank").iterdir() if not p.name.startswith("."))
    assert len(runs) == 3
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["status"] == "completed"
        assert train_steps(r) == [1, 2, 3]
        meta = json.loads((r / "meta.json").read_text())
        assert meta["slurm_job_id"], "the run did not run under SLURM"
        assert (r / "config.yaml").exists()
    status = subprocess.run([LORA_LAB, "status", "tiny/rank", f"run.root={root}", *SHRINK, *grid],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "3 runs: 3 completed" in status.stdout
    n_jobs = len(_sacct_jobs(since))
    assert n_jobs >= 3

    # 2. The same launch again submits no job.
    res = _sweep(root, *grid)
    assert res.returncode == 0 and "0 to launch" in res.stdout, res.stdout
    assert len(_sacct_jobs(since)) == n_jobs

    # 3. A longer run, cancelled after its first checkpoints; the relaunch resumes and completes it.
    long = ["lora.rank=1", "optim.lr=3e-3", f"train.max_steps={LONG_STEPS}", "train.checkpoint_every=5", "method=lora"]
    proc = _sweep(root, *long, background=True)
    run = None
    deadline = time.time() + 600
    while time.time() < deadline:
        done = [p for p in (root / "tiny" / "rank").iterdir() if p not in runs and not p.name.startswith(".")]
        if done and (done[0] / "metrics.jsonl").exists() and len(train_steps(done[0])) >= 7:
            run = done[0]
            break
        assert proc.poll() is None, "sweep ended early: " + "".join(proc.communicate())[-3000:]
        time.sleep(0.2)
    if run is None:
        proc.kill()
        pytest.fail("the long run did not start: " + "".join(proc.communicate())[-3000:])
    job = json.loads((run / "meta.json").read_text())
    job_id = f"{job['slurm_array_job_id']}_{job['slurm_array_task_id']}" if job.get("slurm_array_job_id") else job["slurm_job_id"]
    subprocess.run(["scancel", job_id], check=True)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, "the sweep should report the cancelled run"
    assert not (run / "summary.json").exists() or json.loads((run / "summary.json").read_text())["status"] != "completed"
    steps_before = train_steps(run)
    assert len(steps_before) < LONG_STEPS
    status = subprocess.run([LORA_LAB, "status", str(root / "tiny" / "rank")], capture_output=True, text=True, timeout=60)
    assert "unfinished" in status.stdout or "failed" in status.stdout, status.stdout

    res = _sweep(root, *long)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "1 to launch" in res.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert train_steps(run) == list(range(1, LONG_STEPS + 1))  # every step once: resumed, not restarted or doubled
    meta = json.loads((run / "meta.json").read_text())
    assert meta["resumed_from_step"] > 0


def test_preempted_job_is_requeued_and_resumes(cluster, tmp_path):
    """SIGUSR2 is what SLURM sends before a time limit or a preemption (`--signal`): submitit
    requeues the job, and the requeued job resumes the run from its checkpoint."""
    root = tmp_path / "runs"
    args = ["lora.rank=1", "optim.lr=3e-3", f"train.max_steps={LONG_STEPS}", "train.checkpoint_every=5", "method=lora"]
    proc = _sweep(root, *args, background=True)
    run, deadline = None, time.time() + 600
    while time.time() < deadline:
        found = [p for p in (root / "tiny" / "rank").glob("tiny-*")] if (root / "tiny" / "rank").exists() else []
        if found and (found[0] / "metrics.jsonl").exists() and len(train_steps(found[0])) >= 7:
            run = found[0]
            break
        assert proc.poll() is None, "sweep ended early: " + "".join(proc.communicate())[-3000:]
        time.sleep(0.2)
    if run is None:
        proc.kill()
        pytest.fail("the run did not start: " + "".join(proc.communicate())[-3000:])
    job = json.loads((run / "meta.json").read_text())
    array_task = f"{job['slurm_array_job_id']}_{job['slurm_array_task_id']}"
    subprocess.run(["scancel", "--signal=USR2", array_task], check=True)
    # A requeued job waits for a begin time (about two minutes here); let it start now.
    for _ in range(60):
        state = subprocess.run(["squeue", "-h", "-j", array_task, "-o", "%T %r"], capture_output=True, text=True).stdout
        if "PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={array_task}", "StartTime=now"], check=False)
            break
        time.sleep(1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert train_steps(run) == list(range(1, LONG_STEPS + 1))
    meta = json.loads((run / "meta.json").read_text())
    assert meta["launches"] == 2 and meta["resumed_from_step"] > 0


def test_two_task_slurm_job_matches_one_process(cluster, tmp_path):
    """A run of two SLURM tasks (FSDP2 over gloo, one task per process) logs the one-process losses."""
    from lora_lab.config import compose
    from lora_lab.launch import train

    args = ["arms=lora", "lora.rank=1", "optim.lr=3e-3", "train.max_steps=4", "train.checkpoint_every=0"]
    res = _sweep(tmp_path / "slurm", *args, "hydra.launcher.tasks_per_node=2")
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    (run,) = [p for p in (tmp_path / "slurm" / "tiny" / "rank").glob("tiny-*")]
    assert json.loads((run / "meta.json").read_text())["world_size"] == 2
    two = [json.loads(line)["train_loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "train_loss" in line]
    one = train(compose(["+experiments=tiny/rank", f"run.root={tmp_path / 'one'}", *SHRINK, *args[1:]]))
    losses = [json.loads(line)["train_loss"] for line in open(Path(tmp_path / "one" / "tiny" / "rank" / one["run_id"] / "metrics.jsonl"))
              if "train_loss" in line]
    assert len(two) == len(losses) == 4
    assert max(abs(a - b) / abs(b) for a, b in zip(two, losses)) < 1e-5


def test_runs_per_job_packs_runs_into_slurm_jobs(cluster, tmp_path):
    """runs_per_job=2: the three runs of a shrunk grid go out as two SLURM jobs, one of them running
    two runs one after another in one process; each run has its own complete run directory, and a
    second launch submits nothing."""
    root = tmp_path / "runs"
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))
    grid = ["lora.rank=1,4", "optim.lr=3e-3", "train.max_steps=3", "train.checkpoint_every=0",
            "hydra.launcher.runs_per_job=2"]
    res = _sweep(root, *grid)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "3 runs in 2 SLURM jobs of up to 2 runs each" in res.stdout
    runs = sorted(p for p in (root / "tiny" / "rank").iterdir() if not p.name.startswith("."))
    assert len(runs) == 3
    job_ids = []
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["status"] == "completed"
        assert train_steps(r) == [1, 2, 3]
        job_ids.append(json.loads((r / "meta.json").read_text())["slurm_job_id"])
    assert all(job_ids) and sorted(job_ids.count(j) for j in set(job_ids)) == [1, 2]
    n_jobs = len(_sacct_jobs(since))
    assert n_jobs == 2
    res = _sweep(root, *grid)
    assert res.returncode == 0 and "0 to launch" in res.stdout, res.stdout
    assert len(_sacct_jobs(since)) == n_jobs


def test_a_preempted_pack_resumes_its_run_and_skips_the_finished_one(cluster, tmp_path):
    """runs_per_job=2, a short run then a long one in one job: SIGUSR2 (preemption) while the long
    one trains requeues the job, which skips the finished run (launched once) and resumes the long
    one from its checkpoint (every step once)."""
    root = tmp_path / "runs"
    args = ["arms=lora", "lora.rank=1", "optim.lr=3e-3", f"train.max_steps=4,{LONG_STEPS}", "train.checkpoint_every=5",
            "hydra.launcher.runs_per_job=2"]
    proc = _sweep(root, *args, background=True)
    short = long = None
    deadline = time.time() + 600
    while time.time() < deadline:
        found = [p for p in (root / "tiny" / "rank").glob("tiny-*")] if (root / "tiny" / "rank").exists() else []
        for p in found:
            if (p / "metrics.jsonl").exists():
                if (p / "summary.json").exists():
                    short = p
                elif len(train_steps(p)) >= 7:
                    long = p
        if short and long:
            break
        assert proc.poll() is None, "sweep ended early: " + "".join(proc.communicate())[-3000:]
        time.sleep(0.2)
    if not (short and long):
        proc.kill()
        pytest.fail("the pack did not get to its long run: " + "".join(proc.communicate())[-3000:])
    job = json.loads((long / "meta.json").read_text())
    assert job["slurm_job_id"] == json.loads((short / "meta.json").read_text())["slurm_job_id"]  # one job, two runs
    # One pack: submitit sends a plain job, not an array.
    job_id = (f"{job['slurm_array_job_id']}_{job['slurm_array_task_id']}" if job.get("slurm_array_job_id")
              else job["slurm_job_id"])
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    for _ in range(60):
        state = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"], capture_output=True, text=True).stdout
        if "PENDING" in state:
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=False)
            break
        time.sleep(1)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err[-3000:]
    assert "2 runs in 1 SLURM job of up to 2 runs each" in out
    for run, steps, launches in ((short, 4, 1), (long, LONG_STEPS, 2)):
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        assert train_steps(run) == list(range(1, steps + 1))
        assert json.loads((run / "meta.json").read_text())["launches"] == launches
    assert json.loads((long / "meta.json").read_text())["resumed_from_step"] > 0


def _squeue_jobs(root: Path) -> list[str]:
    """The live jobs (one line per array element, `<id> <state>`) that lora-lab submitted for runs
    under `root` (their comments name records there). sacct does not list held jobs."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %k"], capture_output=True, text=True, check=True).stdout
    return sorted(line.rsplit(" ", 1)[0] for line in out.splitlines() if str(root) in line)


def test_a_detached_sweep_returns_at_once_and_wait_sees_it_through(cluster, tmp_path):
    """`sweep --detach` submits a shrunk grid (three runs, packed two per job) and returns in seconds,
    its jobs held in the queue (sbatch --hold); a second detached launch submits nothing and says
    why; status shows the runs queued with their jobs; once the jobs are released they run with no
    sweep process left, `lora-lab wait` returns 0 when every run has completed, and status shows them."""
    root = tmp_path / "runs"
    grid = ["lora.rank=1,4", "optim.lr=3e-3", "train.max_steps=3", "train.checkpoint_every=0",
            "hydra.launcher.runs_per_job=2", "++hydra.launcher.additional_parameters={hold:true}"]
    t0 = time.monotonic()
    res = _sweep(root, *grid, "--detach")
    took = time.monotonic() - t0
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert took < 30, f"a detached launch took {took:.0f} s"
    assert "3 runs in 2 SLURM jobs of up to 2 runs each" in res.stdout and "lora-lab wait tiny/rank" in res.stdout
    array = re.search(r"submitted 3 runs in 2 SLURM jobs: (\d+)_\[0-1\]", res.stdout)
    assert array, res.stdout
    array = array.group(1)
    assert _squeue_jobs(root) == [f"{array}_0 PENDING", f"{array}_1 PENDING"]  # the sweep is gone, its jobs stay

    again = _sweep(root, *grid, "--detach")
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert "3 runs; 3 queued; 0 to launch" in again.stdout
    assert "3 runs are held by SLURM jobs that are queued or running (squeue): not submitted again" in again.stdout
    assert f"SLURM job {array}_0 PENDING" in again.stdout
    assert _squeue_jobs(root) == [f"{array}_0 PENDING", f"{array}_1 PENDING"]  # nothing submitted twice

    status_args = [LORA_LAB, "status", "tiny/rank", f"run.root={root}", *SHRINK, *grid[:4]]
    status = subprocess.run(status_args, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "3 runs: 3 queued" in status.stdout, status.stdout + status.stderr

    subprocess.run(["scontrol", "release", array], check=True)
    wait = subprocess.run([LORA_LAB, "wait", "tiny/rank", f"run.root={root}", *SHRINK, *grid[:4], "--poll", "1",
                           "--timeout", "300"], capture_output=True, text=True, timeout=400)
    assert wait.returncode == 0, wait.stdout + wait.stderr[-3000:]
    assert "3 runs: 3 completed" in wait.stdout
    runs = sorted(p for p in (root / "tiny" / "rank").iterdir() if not p.name.startswith("."))
    assert len(runs) == 3
    for r in runs:
        assert json.loads((r / "summary.json").read_text())["status"] == "completed"
        assert train_steps(r) == [1, 2, 3]
    jobs = [json.loads((r / "meta.json").read_text())["slurm_job_id"] for r in runs]
    assert sorted(jobs.count(j) for j in set(jobs)) == [1, 2]  # one job ran two runs
    # One sbatch call in all (the first launch's array of two), whatever other jobs the cluster ran meanwhile.
    assert len(list((root / "tiny" / "rank" / ".sweeps").glob("*/.submitit/.submission_file_*.sh"))) == 1
    # A job's line in runs.jsonl follows its run's summary.json: read it once the jobs have left the queue.
    deadline = time.time() + 60
    while _squeue_jobs(root) and time.time() < deadline:
        time.sleep(0.5)
    ended = [json.loads(line) for line in next((root / "tiny" / "rank" / ".sweeps").glob("*/runs.jsonl")).read_text().splitlines()]
    assert sorted(e["status"] for e in ended) == ["completed"] * 3  # written by the jobs themselves
    status = subprocess.run(status_args, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "3 runs: 3 completed" in status.stdout, status.stdout
