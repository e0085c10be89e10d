"""GPUs per run on SLURM (lora_lab/slurm.py place_jobs, lora_lab/memory.py place): an
experiment's arm may set its GPUs, otherwise each run gets the fewest whose memory estimate fits the
cluster profile's GPUs; a dry run prints them, runs that fit nowhere are not launched, and runs of
different resources go out as separate job arrays. No network: the paper models' architectures
are shipped (lora_lab/assets/hf_configs)."""

import re
import types
from pathlib import Path

import pytest

from lora_lab import dispatch, slurm, sweep
from lora_lab.config import ConfigError

PAPER = Path(__file__).resolve().parent.parent / "experiments" / "paper"
NOTE = re.compile(r"^  \[(\d+) GPUs?: (\d+) x (\d+) nodes?, ~([\d.]+) GiB/GPU(, from the arm)?\] (.*)$")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _dry_run(capsys, experiment: str, *overrides: str, cluster: str = "example-gpu") -> list[tuple]:
    code = sweep.sweep(experiment, list(overrides), launcher="slurm", cluster=cluster, dry_run=True, progress=False)
    assert code == 0
    out = capsys.readouterr().out
    return [m.groups() for m in map(NOTE.match, out.splitlines()) if m], out


def test_dry_run_sends_fullft_8b_to_several_gpus_and_lora_to_one(capsys, tmp_path):
    rows, out = _dry_run(capsys, "paper/rank_tulu3_llama8b", "lora.rank=1,512", "optim.lr=1e-4,1e-5",
                         f"run.root={tmp_path}")
    full = [r for r in rows if "method=full" in r[-1]]
    lora = [r for r in rows if "method=lora" in r[-1]]
    assert len(full) == 2 and len(lora) == 4
    for gpus, per_node, nodes, gib, arm, _ in full:
        assert (gpus, per_node, nodes, arm) == ("4", "4", "1", None) and 60 < float(gib) < 75
    for gpus, per_node, nodes, gib, arm, _ in lora:
        assert (gpus, nodes) == ("1", "1") and float(gib) < 75
    assert not (tmp_path / "paper").exists()  # a dry run writes nothing


def test_runs_that_fit_no_gpu_are_named_with_the_reason(capsys, tmp_path):
    _, out = _dry_run(capsys, "paper/rl_gsm8k_llama8b", "lora.rank=1", "optim.lr=1e-4", f"run.root={tmp_path}")
    full = [line for line in out.splitlines() if "method=full" in line]
    assert len(full) == 1 and full[0].startswith("  [does not fit: ~") and "task=rl runs on one GPU" in full[0]
    assert any(line.startswith("  [1 GPU: 1 x 1 node") and "method=lora" in line for line in out.splitlines())


def test_every_paper_run_fits_the_example_profile():
    from lora_lab import memory

    profile = slurm.cluster_profile("example-gpu")
    for path in sorted(PAPER.glob("*.yaml")):
        _, jobs = sweep.expand_jobs(f"paper/{path.stem}", [])
        slurm.place_jobs(jobs, "example-gpu")
        for job in jobs:
            where = job.placement
            if job.cfg.task == "rl" and job.cfg.method == "full":  # RL runs on one process: see the yaml
                assert not where.fits
                continue
            assert where.fits, (path.stem, job.overrides, where.why)
            assert where.estimate.total <= (profile["gpu_mem_gib"] - memory.RESERVE_GIB) * 2**30
            assert where.gpus_per_node <= profile["max_gpus_per_node"] and where.nodes == 1


def _experiment(tmp_path, monkeypatch, arm_keys: str) -> str:
    """A copy of paper/rank_tulu3_llama8b whose FullFT arm carries `arm_keys` (paper/arm_gpus), with
    the original beside it, in a temporary experiments directory."""
    exp = tmp_path / "experiments" / "paper"
    exp.mkdir(parents=True)
    text = (PAPER / "rank_tulu3_llama8b.yaml").read_text()
    text = text.replace("        method: full\n", "        method: full\n" + arm_keys)
    (exp / "arm_gpus.yaml").write_text(text)
    (exp / "rank_tulu3_llama8b.yaml").write_text((PAPER / "rank_tulu3_llama8b.yaml").read_text())
    from lora_lab import config

    monkeypatch.setattr(sweep, "EXPERIMENTS_DIR", tmp_path / "experiments")
    monkeypatch.setattr(config, "EXPERIMENTS_DIR", tmp_path / "experiments")
    return "paper/arm_gpus"


def test_an_arm_sets_its_gpus(tmp_path, monkeypatch, capsys):
    name = _experiment(tmp_path, monkeypatch, "        launcher.gpus_per_node: \"8\"\n")
    rows, _ = _dry_run(capsys, name, "lora.rank=1", "optim.lr=1e-4", f"run.root={tmp_path / 'runs'}")
    full = [r for r in rows if "method=full" in r[-1]]
    assert [r[:3] + (r[4],) for r in full] == [("8", "8", "1", ", from the arm")]
    # The key is the arm's resources, not a run override: the runs are those of the plain experiment.
    _, jobs = sweep.expand_jobs(name, ["lora.rank=1", "optim.lr=1e-4", f"run.root={tmp_path / 'runs'}"])
    _, plain = sweep.expand_jobs("paper/rank_tulu3_llama8b", ["lora.rank=1", "optim.lr=1e-4",
                                                                f"run.root={tmp_path / 'runs'}"])
    assert [j.run_id for j in jobs] == [j.run_id for j in plain]
    assert [j.request for j in jobs] == [{}, {"gpus_per_node": 8}]
    slurm.place_jobs(jobs, "example-gpu")
    # One task per GPU; the profile's host memory (64 GB for one GPU) scales with the GPUs.
    assert jobs[1].resources == {"gpus_per_node": 8, "tasks_per_node": 8, "nodes": 1, "mem_gb": 512}
    assert jobs[0].resources == {}  # the profile's own settings


@pytest.mark.parametrize("keys, message", [
    ("        launcher.gpus: \"8\"\n",
     "grids.full.launcher.gpus: not an arm resource; an arm takes launcher.gpus_per_node, launcher.nodes"),
    ("        launcher.gpus_per_node: two\n", "grids.full.launcher.gpus_per_node=two: expected a positive integer"),
    ("        launcher.nodes: \"0\"\n", "grids.full.launcher.nodes=0: expected a positive integer"),
])
def test_bad_arm_resources_are_one_line_config_errors(tmp_path, monkeypatch, keys, message):
    name = _experiment(tmp_path, monkeypatch, keys)
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep.expand_jobs(name, ["lora.rank=1"])


def test_profile_keys_of_lora_lab_are_not_passed_to_submitit(tmp_path, monkeypatch):
    overrides = slurm.cluster_overrides("example-gpu")
    assert "++hydra.launcher.gpus_per_node=1" in overrides
    assert not any(k in o for o in overrides for k in slurm.PROFILE_KEYS)
    (tmp_path / "bad.yaml").write_text("partition: gpu\ngpus_per_node: 1\ngpu_mem_gib: -80\n")
    monkeypatch.setattr(slurm, "SLURM_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"^slurm/bad.yaml: gpu_mem_gib=-80: expected a positive number$"):
        slurm.cluster_overrides("bad")


def test_a_cpu_profile_places_nothing(tmp_path):
    _, jobs = sweep.expand_jobs("tiny/rank", ["lora.rank=1", "optim.lr=1e-3", "train.seed=0", f"run.root={tmp_path}"])
    slurm.place_jobs(jobs, "local")
    assert all(j.placement is None and j.resources == {} for j in jobs)


def test_each_set_of_resources_is_its_own_job_array(tmp_path):
    def job(name: str, resources: dict):
        return types.SimpleNamespace(run_id=name, resources=resources)

    four = {"gpus_per_node": 4, "tasks_per_node": 4, "nodes": 1}
    packs = [[job("a", {})], [job("b", {})], [job("c", four)], [job("d", four)]]
    launcher = types.SimpleNamespace(params={"gpus_per_node": 1, "partition": "gpu"})
    calls = []

    def run_batch(start, batch, lau=None):
        calls.append((start, [p[0].run_id for p in batch], dict((lau or launcher).params)))
        return [f"{p[0].run_id}: failed" for p in batch if p[0].run_id == "d"]

    problems = dispatch.launch_by_resources(launcher, packs, run_batch)
    assert sorted(calls) == [(0, ["a", "b"], {"gpus_per_node": 1, "partition": "gpu"}),
                             (2, ["c", "d"], {"gpus_per_node": 4, "tasks_per_node": 4, "nodes": 1, "partition": "gpu"})]
    assert problems == ["d: failed"] and launcher.params == {"gpus_per_node": 1, "partition": "gpu"}
    # Runs of other resources, or of several GPUs, never share a packed job.
    jobs = [types.SimpleNamespace(launcher_args=(), resources=r) for r in ({}, {}, four, four)]
    assert [len(p) for p in slurm.pack_jobs(jobs, 4)] == [2, 1, 1]


def test_a_slurm_launch_leaves_out_what_does_not_fit(tmp_path, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(dispatch, "launch", lambda todo, args, cap: launched.extend(todo) or [])
    _, jobs = sweep.expand_jobs("paper/rl_gsm8k_llama8b", ["lora.rank=1", "optim.lr=1e-4", f"run.root={tmp_path}"])
    code = dispatch.launch_jobs("rl", jobs, tmp_path, "slurm", "example-gpu", progress=False)
    assert code == 1  # the FullFT run stays pending
    assert [j.cfg.method for j in launched] == ["lora"]
    assert "not launched: " in capsys.readouterr().err


def test_two_sets_of_resources_launch_through_hydra_at_once(tmp_path):
    """launch_by_resources with Hydra's real submitit launcher (submitit_local here, two tiny runs):
    each set of resources is its own launch, both complete, each run in its job."""
    overrides = ["lora.rank=1", "optim.lr=1e-3,3e-3", "train.seed=0", "method=lora", "train.max_steps=2", "data.num_examples=64",
                 "data.eval_size=16", "data.max_seq_len=64", "optim.batch_size=8", "train.eval_every=0",
                 "train.checkpoint_every=0", "logger.progress=none", f"run.root={tmp_path}"]
    _, jobs = sweep.expand_jobs("tiny/rank", overrides, arms=["lora"])
    assert len(jobs) == 2
    jobs[1].resources = {"cpus_per_task": 1, "timeout_min": 30}
    problems = dispatch.launch(jobs, dispatch.launcher_overrides("local", None, 1, tmp_path / ".sweeps" / "t"), None)
    assert problems == []
    assert [dispatch.run_state(j.path)["state"] for j in jobs] == ["completed", "completed"]
    # Hydra's job directories: the job numbers are the runs' indices, whichever launch they went in.
    assert {"0", "1"} <= {p.name for p in (tmp_path / ".sweeps" / "t").iterdir()}
