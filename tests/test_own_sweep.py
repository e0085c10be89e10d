"""Experiment files anywhere (lora_lab/config.py experiment_file, lora_lab/sweep.py check_experiment)
and `lora-lab new-experiment` (lora_lab/scaffold.py): a yaml file named by its path is swept, planned,
fetched and trained like a shipped experiment, its runs in <run.root>/<its run.experiment>/; bad files
stop with exit code 2 and one line naming the file; the file new-experiment writes is one the sweep
accepts, with LR grids around the recommended LRs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lora_lab import cli, sweep
from lora_lab.config import EXPERIMENTS_DIR, ConfigError, compose, load_config, to_yaml
from lora_lab.runs import run_dir

GRID = """# @package _global_
# A user's sweep.
defaults:
  - override /data: {data}
  - _self_
{run}
train:
  max_steps: 4

hydra:
  sweeper:
    params:
      train.seed: "0"
    grids:
      lora:
        method: lora
        lora.rank: 1,4
        optim.lr: {lrs}
      full:
        method: full
        optim.lr: 1e-3
"""


def write(path: Path, data: str = "tiny-tulu", experiment: str | None = None, lrs: str = "1e-3,3e-3") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    run = f"run:\n  experiment: {experiment}\n" if experiment else ""
    path.write_text(GRID.format(data=data, run=run, lrs=lrs))
    return path


def _grid(cfgs) -> set:
    return {(c.method, c.lora.rank if c.method == "lora" else None, c.optim.lr, c.train.seed) for c in cfgs}


def _one_line_error(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# -- experiment files anywhere --------------------------------------------------------------------


def test_a_file_in_any_directory_is_an_experiment(tmp_path):
    path = write(tmp_path / "sweeps" / "my_sweep.yaml", data="tiny-math", experiment="own/first")
    root = tmp_path / "runs"
    cfgs = sweep.expand(str(path), [f"run.root={root}"])
    assert _grid(cfgs) == {("lora", r, lr, 0) for r in (1, 4) for lr in (1e-3, 3e-3)} | {("full", None, 1e-3, 0)}
    assert all(c.run.experiment == "own/first" and c.data.name == "tiny-math" and c.train.max_steps == 4 for c in cfgs)
    assert all(run_dir(c).parent == root / "own" / "first" for c in cfgs)
    # `lora-lab train +experiments=<file>` composes the same file.
    one = compose([f"+experiments={path}", f"run.root={root}", "lora.rank=4"])
    assert one.run.experiment == "own/first" and one.data.name == "tiny-math" and one.train.max_steps == 4


def test_a_relative_path_is_read_from_the_current_directory(tmp_path, monkeypatch):
    write(tmp_path / "sub" / "mine.yaml", lrs="3e-4,1e-3,3e-3")
    monkeypatch.chdir(tmp_path)
    cfgs = sweep.expand("sub/mine.yaml", ["run.root=runs"])
    assert sorted({c.optim.lr for c in cfgs if c.method == "lora"}) == [3e-4, 1e-3, 3e-3]
    monkeypatch.chdir(tmp_path / "sub")
    assert [run_dir(c) for c in sweep.expand("mine.yaml", ["run.root=runs"])] == [run_dir(c) for c in cfgs]
    with pytest.raises(ConfigError, match="no such file"):
        sweep.expand("sub/mine.yaml")


def test_a_file_without_run_experiment_names_its_runs_after_itself(tmp_path):
    path = write(tmp_path / "My Sweep.v2.yaml")
    cfgs = sweep.expand(str(path), [f"run.root={tmp_path / 'runs'}"])
    names = {c.run.experiment for c in cfgs}
    assert len(names) == 1
    name = names.pop()
    assert name.startswith("My_Sweep_v2-") and len(name) == len("My_Sweep_v2-") + 8
    # The command line's run.experiment wins over the derived one.
    assert {c.run.experiment for c in sweep.expand(str(path), ["run.experiment=chosen"])} == {"chosen"}
    # Each run's config.yaml names its directory: read back, it maps to the same run directory (what
    # a relaunch resumes), without the experiment file.
    back = tmp_path / "config.yaml"
    for c in cfgs:
        back.write_text(to_yaml(c))
        assert run_dir(load_config(back)) == run_dir(c)


def test_two_files_of_the_same_name_in_two_directories_do_not_collide(tmp_path):
    a = write(tmp_path / "a" / "sweep.yaml", data="tiny-math")
    b = write(tmp_path / "b" / "sweep.yaml", data="tiny-tulu")
    root = [f"run.root={tmp_path / 'runs'}"]
    ja, jb = sweep.expand_jobs(str(a), root)[1], sweep.expand_jobs(str(b), root)[1]
    assert {j.cfg.data.name for j in ja} == {"tiny-math"} and {j.cfg.data.name for j in jb} == {"tiny-tulu"}
    dirs_a, dirs_b = {j.path.parent for j in ja}, {j.path.parent for j in jb}
    assert len(dirs_a) == len(dirs_b) == 1 and dirs_a != dirs_b
    # The same contents in two places: still two experiments, in two directories.
    b.write_text(a.read_text())
    assert {j.path.parent for j in sweep.expand_jobs(str(b), root)[1]} != dirs_a
    # Composed again from their shared overrides (as refinement and SLURM jobs do), each is its own.
    from lora_lab.config import compose_dict

    assert compose_dict(list(ja[0].master)).data.name == "tiny-math"
    assert compose_dict(list(jb[0].master)).data.name == "tiny-math"  # b's file now holds a's contents
    write(b, data="tiny-tulu")
    assert compose_dict(list(ja[0].master)).data.name == "tiny-math"
    assert compose_dict(list(jb[0].master)).data.name == "tiny-tulu"


def test_a_shipped_experiment_given_by_its_path_is_the_shipped_one(tmp_path):
    by_path = sweep.expand_jobs(str(EXPERIMENTS_DIR / "tiny" / "rank.yaml"), [f"run.root={tmp_path}"], arms=["full"])[1]
    by_name = sweep.expand_jobs("tiny/rank", [f"run.root={tmp_path}"], arms=["full"])[1]
    assert by_name and [j.path for j in by_path] == [j.path for j in by_name]
    assert by_path[0].master == by_name[0].master


def test_status_plan_and_fetch_take_an_experiment_file(tmp_path, capsys):
    path = write(tmp_path / "mine.yaml", experiment="mine")
    assert cli.main(["status", str(path), f"run.root={tmp_path / 'runs'}"]) == 0
    assert "5 runs: 5 pending" in capsys.readouterr().out
    assert cli.main(["fetch", str(path), "--dry-run"]) == 0
    assert f"{path}: nothing to fetch (5 runs" in capsys.readouterr().out
    from lora_lab.reproduce import plan

    planned = plan("tiny", False, [f"run.root={tmp_path / 'runs'}"], only=["tiny/invariance", str(path)])
    assert set(planned) == {"tiny/invariance", str(path)} and len(planned[str(path)]) == 5
    with pytest.raises(ConfigError, match="not tiny-scale experiments"):
        plan("tiny", False, [], only=["tiny/nope"])


@pytest.mark.parametrize("text, names", [
    (None, ["no such file", "new-experiment"]),
    ("run:\n  experiment: x\n", ["# @package _global_", "first line"]),
    ("# @package _global_\nhydra:\n  sweeper:\n    grids:\n      lora:\n        optim.lr: [1e-3, 3e-3]\n",
     ["hydra.sweeper.grids.lora.optim.lr", "comma-separated"]),
    ("# @package _global_\nhydra:\n  sweeper:\n    grids: [1, 2]\n", ["hydra.sweeper.grids", "arm names"]),
    ("# @package _global_\nrun: [1\n", ["not valid YAML at line", "fix the file"]),
    ("# @package _global_\n- 1\n- 2\n", ["not a mapping"]),
    ("# @package _global_\nhydra:\n  sweeper:\n    grids:\n      lora:\n        optim.lrr: 1e-3,3e-3\n", ["optim.lrr", "no such key"]),
    ("# @package _global_\nhydra:\n  sweeper:\n    grids:\n      lora:\n        lora.rank: 1,0\n", ["lora.rank", "1..512"]),
    # What refinement reads once the grid has run is checked before it runs.
    ("# @package _global_\nhydra:\n  sweeper:\n    refine_score: accuracy\n    grids:\n      lora:\n        optim.lr: 1e-3,3e-3\n",
     ["hydra.sweeper.refine_score=accuracy", "final_eval_loss"]),
    ("# @package _global_\nhydra:\n  sweeper:\n    refine_factor: 0.5\n    grids:\n      lora:\n        optim.lr: 1e-3,3e-3\n",
     ["hydra.sweeper.refine_factor=0.5", "number > 1"]),
])
def test_a_bad_experiment_file_stops_with_one_line_naming_it(text, names, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    line = _one_line_error(["sweep", str(path), "--dry-run", f"run.root={tmp_path / 'runs'}"], capsys)
    assert str(path) in line, line
    for name in names:
        assert name in line, line


@pytest.mark.parametrize("argv", [["status", "{path}"], ["plan", "experiment={path}"], ["fetch", "{path}", "--dry-run"],
                                  ["reproduce", "--only", "{path}"], ["gpus", "+experiments={path}"]])
def test_every_command_that_takes_an_experiment_checks_the_file(argv, tmp_path, capsys):
    path = tmp_path / "nohead.yaml"
    path.write_text("train:\n  max_steps: 2\n")
    line = _one_line_error([a.format(path=path) for a in argv] + [f"run.root={tmp_path / 'runs'}"], capsys)
    assert str(path) in line and "@package _global_" in line, line
    assert not (tmp_path / "runs").exists()


def test_train_with_a_bad_experiment_file_stops_before_any_run(tmp_path, capsys):
    path = tmp_path / "nohead.yaml"
    path.write_text("train:\n  max_steps: 2\n")
    line = _one_line_error(["train", f"+experiments={path}", f"run.root={tmp_path / 'runs'}"], capsys)
    assert str(path) in line and "@package _global_" in line
    assert not (tmp_path / "runs").exists()


def test_an_unknown_name_offers_the_shipped_ones_and_a_file(capsys):
    line = _one_line_error(["sweep", "tiny/nope", "--dry-run"], capsys)
    assert "choose one of" in line and "tiny/rank" in line and "experiment file" in line


def test_a_dry_run_of_an_experiment_file_imports_no_torch(tmp_path):
    from test_light_commands import PROBE

    path = write(tmp_path / "mine.yaml")
    out = subprocess.run([sys.executable, "-c", PROBE, "sweep", "mine.yaml", "--dry-run", f"run.root={tmp_path}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rc": 0, "heavy": []}, out.stderr[-2000:]
    assert str(path.name) in out.stdout


# -- lora-lab new-experiment ----------------------------------------------------------------------


def test_new_experiment_writes_a_file_the_sweep_accepts(tmp_path, monkeypatch, capsys):
    from lora_lab.lrs import recommended_lr
    from lora_lab.runs import run_state

    monkeypatch.chdir(tmp_path)
    assert cli.main(["new-experiment", "mine"]) == 0
    path = tmp_path / "mine.yaml"
    assert "wrote mine.yaml" in capsys.readouterr().out
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    assert "lora-lab sweep mine.yaml --dry-run" in text and "lora-lab analyze runs/mine" in text
    assert cli.main(["sweep", "mine.yaml", "--dry-run"]) == 0
    assert "mine.yaml: 75 runs" in capsys.readouterr().out
    cfgs = sweep.expand("mine.yaml")
    assert {c.run.experiment for c in cfgs} == {"mine"} and all(run_state(run_dir(c))["state"] == "pending" for c in cfgs)
    assert {c.model.name for c in cfgs} == {"tiny-llama"} and {c.data.name for c in cfgs} == {"tiny-tulu"}
    assert {c.lora.rank for c in cfgs if c.method == "lora"} == {1, 4, 16, 64}
    assert {c.train.seed for c in cfgs} == {0, 1, 2}
    steps = 2048 // 32  # one epoch of tiny-tulu's 2048 examples at batch 32
    for method, rec in (("lora", recommended_lr("tiny-llama", "lora", steps)), ("full", recommended_lr("tiny-llama", "full"))):
        lrs = sorted({c.optim.lr for c in cfgs if c.method == method})
        assert len(lrs) == 5, (method, lrs)
        assert math.isclose(lrs[2], float(f"{rec:.1e}")), (method, lrs, rec)  # centred on the recommendation
        assert 80 < lrs[-1] / lrs[0] < 120  # two decades, half a decade apart
        assert all(2.5 < b / a < 3.9 for a, b in zip(lrs, lrs[1:])), lrs
    quick = sweep.expand("mine.yaml", quick=True)
    assert {c.train.seed for c in quick} == {0} and {c.lora.rank for c in quick if c.method == "lora"} == {1, 16}


def test_new_experiment_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("mine")
    line = _one_line_error(["new-experiment", "mine"], capsys)
    assert "mine.yaml: exists" in line
    assert (tmp_path / "mine.yaml").read_text() == "mine"
    assert cli.main(["new-experiment", "mine", "--out", "other/place.yaml"]) == 0
    assert sweep.expand("other/place.yaml")[0].run.experiment == "mine"
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["place.yaml"]  # the trial copy is gone


@pytest.mark.parametrize("argv, names", [
    (["new-experiment", "bad name"], ["NAME 'bad name'", "run.experiment"]),
    (["new-experiment", "x", "--out", "x.txt"], ["--out x.txt", ".yaml"]),
    (["new-experiment", "x", "--data", "nope"], ["--data nope", "tiny-tulu"]),
    (["new-experiment", "x", "--model", "nope"], ["model.name='nope'"]),
    (["new-experiment", "x", "--from", "tiny/nope"], ["--from tiny/nope", "tiny/rank"]),
])
def test_new_experiment_bad_arguments_stop_with_one_line(argv, names, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(argv, capsys)
    for name in names:
        assert name in line, line
    assert not list(tmp_path.iterdir())


def test_new_experiment_from_a_shipped_grid_keeps_its_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["new-experiment", "mine", "--from", "tiny/rank"]) == 0
    mine, shipped = sweep.expand("mine.yaml"), sweep.expand("tiny/rank")
    assert _grid(mine) == _grid(shipped)
    # The same runs (a run's identity leaves out its experiment), in the experiment's own directory.
    assert sorted(run_dir(c).name for c in mine) == sorted(run_dir(c).name for c in shipped)
    assert {c.run.experiment for c in mine} == {"mine"}
    assert _grid(sweep.expand("mine.yaml", quick=True)) == _grid(sweep.expand("tiny/rank", quick=True))


def test_new_experiment_for_a_paper_model_sets_its_chat_template(tmp_path, monkeypatch):
    from lora_lab.lrs import recommended_lr

    monkeypatch.chdir(tmp_path)
    assert cli.main(["new-experiment", "big", "--model", "llama-3.2-1b", "--data", "tulu3"]) == 0
    cfgs = sweep.expand("big.yaml")
    assert {c.model.name for c in cfgs} == {"meta-llama/Llama-3.2-1B"} and {c.data.chat_template for c in cfgs} == {"llama3"}
    lrs = sorted({c.optim.lr for c in cfgs if c.method == "full"})
    assert math.isclose(lrs[2], float(f"{recommended_lr('llama-3.2-1b', 'full'):.1e}"))
    assert "lora-lab gpus +experiments=big.yaml" in (tmp_path / "big.yaml").read_text()


def test_new_experiment_imports_no_torch_at_the_top():
    out = subprocess.run([sys.executable, "-c", "import sys, lora_lab.scaffold; "
                          "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_new_experiment_sweep_and_analyze_end_to_end(tmp_path):
    """new-experiment from tiny/rank, shrunk to 4 runs of 4 steps (LoRA r4 and FullFT, two LRs, one
    seed), swept from a relative path, then analyzed: U-curves and optimal LRs of an own experiment."""
    def lab(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "lora_lab", *args], capture_output=True, text=True, cwd=tmp_path,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    lab("new-experiment", "mine", "--from", "tiny/rank")
    shrink = ["lora.rank=4", "optim.lr=1e-3,3e-3", "train.seed=0", "train.max_steps=4", "data.num_examples=256",
              "max_parallel=2"]
    lab("sweep", "mine.yaml", *shrink)
    runs = tmp_path / "runs" / "mine"
    summaries = [json.loads(p.read_text()) for p in runs.glob("*/summary.json")]
    assert len(summaries) == 4 and {s["status"] for s in summaries} == {"completed"}
    assert "4 runs: 4 completed" in lab("status", "mine.yaml", *shrink[:-1]).stdout
    lab("analyze", "runs/mine")
    assert (runs / "analysis" / "report.md").is_file() and (runs / "analysis" / "report.html").is_file()
    # An experiment of any name gets its U-curves and optimal LRs (analysis by what varies).
    rows = (runs / "analysis" / "optimal_lr.csv").read_text().splitlines()
    assert rows[0].startswith("method,") and len(rows) == 3  # LoRA r4 and FullFT


def test_a_job_launched_through_hydra_composes_the_file_in_its_own_process(tmp_path):
    """workers=false: each run is a submitit job that composes its config from the experiment's
    overrides in a process of its own, as a SLURM job does: the file registered in the sweep's
    process reaches it (Hydra's state travels with the job)."""
    write(tmp_path / "mine.yaml", data="tiny-math")
    out = subprocess.run([sys.executable, "-m", "lora_lab", "sweep", "mine.yaml", "optim.lr=1e-3", "arms=full",
                          "train.max_steps=2", "data.num_examples=64", "data.eval_size=16", "optim.batch_size=8",
                          "workers=false", "max_parallel=1", "run.root=runs"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    [config] = (tmp_path / "runs").glob("mine-*/*/config.yaml")
    cfg = load_config(config)
    assert cfg.data.name == "tiny-math" and cfg.run.experiment == config.parent.parent.name
    assert json.loads((config.parent / "summary.json").read_text())["status"] == "completed"
