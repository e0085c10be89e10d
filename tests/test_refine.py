"""LR refinement (lora_lab/refine.py): the rule on given scores, the arms and new runs of a real grid,
the rounds of `sweep --refine` over run directories written by hand (locally and on SLURM), and one
real tiny sweep with --refine."""

import json
import math
import subprocess
import time
from types import SimpleNamespace

import pytest

from conftest import LORA_LAB, write_run
from lora_lab import refine, status, sweep
from lora_lab.config import ConfigError, compose_dict, from_dictconfig
from lora_lab.runs import run_dir

# A grid small enough for any test: the FullFT arm of tiny/rank at two or three LRs.
FULL = ["arms=full", "train.seed=0", "train.max_steps=4", "data.num_examples=64", "optim.batch_size=8", "data.max_seq_len=64",
        "data.eval_size=8", "train.eval_every=0", "train.checkpoint_every=0", "logger.progress=none"]


def grid(tmp_path, *overrides):
    """(master, jobs) of the FullFT arm of tiny/rank with these overrides, under tmp_path."""
    args = [f"run.root={tmp_path / 'runs'}", *[o for o in FULL if not o.startswith("arms=")], *overrides]
    return sweep.expand_jobs("tiny/rank", args, arms=["full"])


def losses(lr, optimum):
    """A U-curve in log10(LR) around `optimum`, reached at the end of 10 steps."""
    x = math.log10(lr / optimum)
    return [1.0 + 5.0 / t + x * x for t in range(1, 11)]


# -- the rule ------------------------------------------------------------------------------------------

def test_best_at_the_lowest_lr_adds_one_step_below_and_at_the_highest_one_step_above():
    assert refine.next_lrs({1e-3: 1.0, 3e-3: 1.5, 1e-2: 2.0})[0] == [3.3e-4]
    new, why = refine.next_lrs({1e-3: 2.0, 3e-3: 1.5, 1e-2: 1.0})
    assert new == [3e-2] and "highest" in why
    # The step is the arm's smallest ratio between adjacent LRs; an arm of one LR gets both sides at sqrt(10).
    assert refine.next_lrs({1e-3: 1.0, 1.7e-3: 1.1, 3e-3: 1.2})[0] == [5.9e-4]
    assert refine.next_lrs({3e-3: 1.0})[0] == [9.5e-4, 9.5e-3]
    # RL: higher is better.
    assert refine.next_lrs({1e-4: 0.2, 3e-4: 0.4}, maximize=True)[0] == [9e-4]


def test_an_interior_optimum_gets_midpoints_while_its_neighbours_are_wide_apart():
    new, why = refine.next_lrs({1e-3: 1.5, 3e-3: 1.0, 1e-2: 1.4})
    assert new == [1.7e-3, 5.5e-3] and "10x apart > 4x" in why
    new, why = refine.next_lrs({1e-3: 1.5, 1.7e-3: 1.1, 3e-3: 1.0, 5.5e-3: 1.05, 1e-2: 1.4})
    assert new == [] and "3.24x apart <= 4x" in why
    assert refine.next_lrs({1e-3: 1.5, 1.7e-3: 1.1, 3e-3: 1.0, 5.5e-3: 1.05, 1e-2: 1.4}, factor=3.2)[0] == [2.3e-3, 4.1e-3]


def test_the_default_factor_gives_a_half_decade_grid_one_round_and_a_decade_grid_two():
    def rounds(lrs, optimum):
        scores = {lr: math.log10(lr / optimum) ** 2 for lr in lrs}
        n = 0
        while True:
            new, _ = refine.next_lrs(scores)
            if not new:
                return n
            n += 1
            scores.update({lr: math.log10(lr / optimum) ** 2 for lr in new})

    for optimum in (2.2e-3, 3e-3, 4.1e-3):
        assert rounds([1e-3, 3e-3, 1e-2], optimum) == 1
    assert rounds([1e-3, 1e-2, 1e-1], 1e-2) == 2


def test_a_diverged_lr_counts_as_the_worst():
    assert refine.next_lrs({1e-3: 1.2, 3e-3: 1.0, 1e-2: math.inf})[0] == [1.7e-3, 5.5e-3]
    assert refine.next_lrs({1e-3: 1.2, 3e-3: math.nan})[0] == [3.3e-4]
    new, why = refine.next_lrs({1e-3: math.inf, 3e-3: math.inf})
    assert new == [3.3e-4] and "every LR diverged" in why
    assert refine.next_lrs({1e-4: -math.inf, 3e-4: 0.1}, maximize=True)[0] == [9e-4]


def test_new_lrs_are_rounded_and_never_repeated():
    assert refine.rounded(math.sqrt(1e-3 * 3e-3)) == 1.7e-3
    assert refine.lr_text(1.7e-3) == "1.7e-03" and refine.lr_text(1e-3) == "1e-03"
    # Both midpoints round onto LRs the arm has.
    new, why = refine.next_lrs({1e-3: 1.1, 1.05e-3: 1.0, 1.1e-3: 1.1}, factor=1.01)
    assert new == [] and "round to LRs it has" in why


def test_bad_options_are_config_errors_naming_the_option():
    with pytest.raises(ConfigError, match="--refine-factor=1: expected a number > 1"):
        refine.parse_options("1", "2")
    with pytest.raises(ConfigError, match="--refine-rounds=-1: expected an integer >= 0"):
        refine.parse_options("4", "-1")
    with pytest.raises(ConfigError, match="--refine-factor=x"):
        refine.parse_options("x", "2")
    assert refine.parse_options("3.5", "0") == (3.5, 0)


@pytest.mark.parametrize("argv, message", [
    (["sweep", "tiny/rank", "--refine", "--refine-factor", "1"], "--refine-factor=1: expected a number > 1"),
    (["sweep", "tiny/rank", "--refine", "--refine-rounds=-1"], "--refine-rounds=-1: expected an integer >= 0"),
    (["reproduce", "--refine-factor=0.5"], "--refine-factor=0.5: expected a number > 1"),
])
def test_bad_refine_options_exit_2_with_one_line(argv, message):
    res = subprocess.run([LORA_LAB, *argv, "--dry-run"] if argv[0] == "sweep" else [LORA_LAB, *argv],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


# -- arms and new runs of a real grid -----------------------------------------------------------------

def test_arms_group_the_runs_that_differ_only_in_lr_and_seed(tmp_path):
    _, jobs = sweep.expand_jobs("tiny/rank", [f"run.root={tmp_path}", "lora.rank=1,4", "optim.lr=1e-3,3e-3",
                                              "train.seed=0,1"])
    arms = refine.arms_of(jobs)
    assert sorted(a.name for a in arms) == ["full [method=full]", "lora [method=lora lora.rank=1]",
                                            "lora [method=lora lora.rank=4]"]
    for a in arms:
        assert a.lrs == [1e-3, 3e-3] and a.seeds == [0, 1] and len(a.jobs) == 4
        assert [t.cfg.train.seed for t in a.templates] == [0, 1]


def test_new_runs_differ_only_in_lr_and_land_in_the_experiments_directory(tmp_path):
    master, jobs = grid(tmp_path, "optim.lr=1e-3,3e-3", "train.seed=0,1")
    arm, = refine.arms_of(jobs)
    new = refine.new_jobs(arm, [1.7e-3])
    assert [j.cfg.train.seed for j in new] == [0, 1]
    for job, template in zip(new, arm.templates):
        a, b = job.cfg.to_dict(), template.cfg.to_dict()
        assert a["optim"].pop("lr") == 1.7e-3 and b["optim"].pop("lr") == 1e-3
        assert a == b
        assert job.path.parent == template.path.parent == tmp_path / "runs" / "tiny" / "rank"
        assert job.run_id.startswith("tiny-llama_tiny-tulu_full_lr1.7e-3_bs8_s") and job.run_id != template.run_id
        assert job.arm == "full" and job.master == template.master
        # What a SLURM job composes from the overrides is the same run.
        assert from_dictconfig(compose_dict([*master, *job.overrides])) == job.cfg
    # An LR that is not a grid axis (tiny/invariance sets one for all runs) is replaced as well.
    master, jobs = sweep.expand_jobs("tiny/invariance", [f"run.root={tmp_path}"], arms=["base"])
    job = refine.refined_job(jobs[0], 9.5e-3)
    assert job.cfg.optim.lr == 9.5e-3 and job.overrides[-1] == "optim.lr=9.5e-03"
    assert from_dictconfig(compose_dict([*master, *job.overrides])) == job.cfg


def test_runs_named_with_one_digit_of_the_lr_are_found_again(tmp_path):
    _, jobs = grid(tmp_path, "optim.lr=1.7e-3")
    cfg = jobs[0].cfg
    assert run_dir(cfg).name.startswith("tiny-llama_tiny-tulu_full_lr1.7e-3_")
    old = run_dir(cfg).parent / run_dir(cfg).name.replace("lr1.7e-3", "lr2e-3")
    old.mkdir(parents=True)
    assert run_dir(cfg) == old


def test_an_arm_waits_until_every_seed_of_every_lr_has_finished(tmp_path):
    _, jobs = grid(tmp_path, "optim.lr=1e-3,3e-3", "train.seed=0,1")
    for j in jobs[:3]:
        write_run(j.cfg, losses(j.cfg.optim.lr, 1e-4))
    plan = refine.next_round(jobs)
    assert [a.state for a in plan.arms] == ["waiting"] and plan.jobs == []
    assert "1 of its 4 runs to finish" in plan.lines()[0]
    write_run(jobs[3].cfg, losses(jobs[3].cfg.optim.lr, 1e-4), status=None)  # unfinished: still waiting
    assert refine.next_round(jobs).arms[0].state == "waiting"
    (jobs[3].path / "summary.json").write_text(json.dumps({"status": "completed", "steps": 10}))
    plan = refine.next_round(jobs)
    assert plan.arms[0].state == "run" and plan.rounds == "1"
    assert sorted((j.cfg.optim.lr, j.cfg.train.seed) for j in plan.jobs) == [(3.3e-4, 0), (3.3e-4, 1)]
    # One seed diverged at the best LR: its mean is the worst, and the other edge wins.
    _, jobs = grid(tmp_path / "b", "optim.lr=1e-3,3e-3", "train.seed=0,1")
    for j in jobs:
        diverged = j.cfg.optim.lr == 1e-3 and j.cfg.train.seed == 1
        write_run(j.cfg, losses(j.cfg.optim.lr, 1e-4), status="diverged" if diverged else "completed")
    assert [j.cfg.optim.lr for j in refine.next_round(jobs).jobs] == [9e-3, 9e-3]


def test_rl_arms_are_scored_on_validation_accuracy_where_the_runs_have_it():
    def job(lr):
        return SimpleNamespace(cfg=SimpleNamespace(optim=SimpleNamespace(lr=lr)))

    rows = {1e-4: {"status": "completed", "final_val_accuracy": 0.5, "final_eval_accuracy": 0.1},
            3e-4: {"status": "completed", "final_val_accuracy": 0.3, "final_eval_accuracy": 0.9},
            1e-3: {"status": "diverged"}}
    jobs = [job(lr) for lr in rows]
    scores = refine.score_runs(jobs, lambda j: rows[j.cfg.optim.lr], maximize=True)
    assert scores == {1e-4: 0.5, 3e-4: 0.3, 1e-3: -math.inf}
    del rows[1e-4]["final_val_accuracy"]  # not every run has one: the held-out accuracy
    assert refine.score_runs(jobs, lambda j: rows[j.cfg.optim.lr], maximize=True)[3e-4] == 0.9
    # The scores are columns of the analysis's loader.
    from lora_lab.results import SUMMARY_KEYS

    assert set(refine.RL_SCORES) - {"final_reward_smoothed"} <= set(SUMMARY_KEYS)


# -- sweep --refine over runs written by hand ---------------------------------------------------------

@pytest.fixture
def fake_launch(monkeypatch):
    """sweep.launch_jobs replaced by one that writes each run it is given as completed, with a U-curve
    around `optimum[0]`; the calls are recorded (title, LRs launched, dry_run)."""
    calls, optimum = [], [2e-4]

    def launch(title, jobs, where, launcher="local", cluster=None, max_parallel=None, dry_run=False, progress=True,
               overrides=(), workers=True):
        todo = [j for j in jobs if not (j.path / "summary.json").exists()]
        calls.append((title, sorted({j.cfg.optim.lr for j in todo}), dry_run))
        if not dry_run:
            for j in todo:
                write_run(j.cfg, losses(j.cfg.optim.lr, optimum[0]))
        return 0

    monkeypatch.setattr(sweep, "launch_jobs", launch)
    return calls, optimum


def test_local_refine_runs_round_after_round_and_a_second_call_adds_nothing(tmp_path, fake_launch, capsys):
    calls, optimum = fake_launch
    args = [f"run.root={tmp_path / 'runs'}", "optim.lr=1e-3,3e-3", *FULL[1:]]
    assert sweep.sweep("tiny/rank", args, arms=["full"], refine=True, progress=False) == 0
    assert [c[:2] for c in calls] == [("tiny/rank", [1e-3, 3e-3]), ("tiny/rank refinement round 1", [3.3e-4]),
                                      ("tiny/rank refinement round 2", [1.1e-4])]
    out = capsys.readouterr().out
    assert "full [method=full]: round 1 adds 3.3e-04: best LR 1e-03 is the lowest" in out
    assert "full [method=full]: stopped after 2 rounds: best LR 3.3e-04 between 1.1e-04 and 1e-03" in out
    assert "--refine-rounds=2 reached (would add 1.9e-04, 5.7e-04)" in out
    runs = sorted(p.name for p in (tmp_path / "runs" / "tiny" / "rank").iterdir())
    assert [r.split("_")[3] for r in runs] == ["lr1.1e-4", "lr1e-3", "lr3.3e-4", "lr3e-3"]

    calls.clear()
    assert sweep.sweep("tiny/rank", args, arms=["full"], refine=True, progress=False) == 0
    assert [c[1] for c in calls] == [[]]  # the grid, nothing to launch; no round
    # A third round is allowed now: it adds the midpoints, and then the optimum is bracketed.
    assert sweep.sweep("tiny/rank", args, arms=["full"], refine=True, refine_rounds=3, progress=False) == 0
    assert [c[1] for c in calls[1:]] == [[], [1.9e-4, 5.7e-4]]
    assert "full [method=full]: bracketed after 3 rounds: best LR 1.9e-04 between 1.1e-04 and 3.3e-04" in capsys.readouterr().out


def test_status_lists_the_refined_runs_as_the_experiments(tmp_path, fake_launch, capsys):
    args = [f"run.root={tmp_path / 'runs'}", "optim.lr=1e-3,3e-3", *FULL[1:]]
    sweep.sweep("tiny/rank", args, arms=["full"], refine=True, refine_rounds=1, progress=False)
    # A run of other settings in the same directory is not one of the arm's.
    other = grid(tmp_path, "optim.lr=3.3e-4", "train.max_steps=5")[1][0]
    write_run(other.cfg, [1.0])
    capsys.readouterr()
    assert status.status_main(["tiny/rank", *args, "arms=full"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 runs: 3 completed")
    assert "_lr3.3e-4_" in out and "an LR added to the grid (sweep --refine)" in out
    assert other.run_id not in out


def test_dry_run_shows_the_next_round_once_the_grid_has_finished(tmp_path, fake_launch, capsys):
    calls, _ = fake_launch
    args = [f"run.root={tmp_path / 'runs'}", "optim.lr=1e-3,3e-3", *FULL[1:]]
    sweep.sweep("tiny/rank", args, arms=["full"], refine=True, dry_run=True, progress=False)
    assert calls == [("tiny/rank", [1e-3, 3e-3], True)]
    assert "waits for 2 of its 2 runs to finish" in capsys.readouterr().out
    sweep.sweep("tiny/rank", args, arms=["full"], refine_rounds=0, progress=False)  # the grid only
    calls.clear()
    sweep.sweep("tiny/rank", args, arms=["full"], refine=True, dry_run=True, progress=False)
    assert calls == [("tiny/rank", [], True), ("tiny/rank refinement round 1", [3.3e-4], True)]
    assert len(list((tmp_path / "runs" / "tiny" / "rank").iterdir())) == 2  # nothing written


def test_on_slurm_each_call_submits_the_grid_or_the_next_round(tmp_path, fake_launch, capsys):
    calls, _ = fake_launch
    args = [f"run.root={tmp_path / 'runs'}", "optim.lr=1e-3,3e-3", *FULL[1:]]

    def call():
        calls.clear()
        sweep.sweep("tiny/rank", args, launcher="slurm", cluster="local", arms=["full"], refine=True, progress=False)
        return [c[:2] for c in calls], capsys.readouterr().out

    launched, out = call()
    assert launched == [("tiny/rank", [1e-3, 3e-3])]
    assert "run this command again after those jobs end to submit refinement round 1" in out
    launched, out = call()
    assert launched == [("tiny/rank", []), ("tiny/rank refinement round 1", [3.3e-4])]
    assert "submitted refinement round 1 (1 run); run this command again after those jobs end" in out
    launched, out = call()
    assert launched == [("tiny/rank", []), ("tiny/rank refinement round 2", [1.1e-4])]
    launched, out = call()
    assert launched == [("tiny/rank", [])] and "stopped after 2 rounds" in out


def test_reproduce_refines_only_arms_of_several_lrs(tmp_path, fake_launch, monkeypatch):
    """After the grids, one round of every experiment's arms goes through one launch; an experiment
    whose arms have one LR each is left as it is."""
    from lora_lab import reproduce

    calls, _ = fake_launch
    monkeypatch.setattr(reproduce, "launch_jobs", sweep.launch_jobs)
    monkeypatch.setattr(reproduce, "plan", lambda scale, quick, overrides, only, beyond: {
        "tiny/rank": grid(tmp_path, "optim.lr=1e-3,3e-3")[1], "tiny/one_lr": grid(tmp_path, "optim.lr=3e-3",
                                                                                 "train.max_steps=5")[1]})
    import lora_lab.report as report

    monkeypatch.setattr(report, "analyze", lambda paths, out, progress: {"files": [], "verdicts": {}})
    monkeypatch.setattr(report, "verdict_table", lambda verdicts: "")
    assert reproduce.reproduce(quick=True, overrides=[f"run.root={tmp_path / 'runs'}"]) == 0
    # --quick: one round (a second would add 1.1e-4).
    assert [c[:2] for c in calls] == [("reproduce tiny", [1e-3, 3e-3]),
                                      ("reproduce tiny refinement round 1", [3.3e-4])]
    calls.clear()
    assert reproduce.reproduce(overrides=[f"run.root={tmp_path / 'runs'}"], refine=False) == 0
    assert [c[:2] for c in calls] == [("reproduce tiny", [])]


# -- a real sweep --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_tiny_sweep_with_refine_adds_runs_once(tmp_path):
    root = tmp_path / "runs"
    args = [LORA_LAB, "sweep", "tiny/rank", f"run.root={root}", "optim.lr=1e-3,3e-3", "train.seed=0", "max_parallel=1",
            *FULL, "--refine", "--refine-rounds", "1"]
    t0 = time.monotonic()
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted(p for p in (root / "tiny" / "rank").iterdir() if not p.name.startswith("."))
    lrs = sorted(r.name.split("_")[3] for r in runs)
    assert len(runs) == 3 and {"lr1e-3", "lr3e-3"} < set(lrs), lrs
    assert set(lrs) - {"lr1e-3", "lr3e-3"} <= {"lr3.3e-4", "lr9e-3"}
    assert "refinement round 1: 1 runs" in first.stdout and "round 1 adds" in first.stdout
    assert all(json.loads((r / "summary.json").read_text())["status"] in ("completed", "diverged") for r in runs)
    sweeps = sorted((root / "tiny" / "rank" / ".sweeps").iterdir())
    print(f"sweep --refine: {time.monotonic() - t0:.0f} s")

    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 to launch" in again.stdout and "refinement round" not in again.stdout
    assert sorted((root / "tiny" / "rank" / ".sweeps").iterdir()) == sweeps  # nothing launched
    assert sorted(p for p in (root / "tiny" / "rank").iterdir() if not p.name.startswith(".")) == runs

    from lora_lab.results import load_results

    assert sorted(load_results([root / "tiny" / "rank"]).runs["optim.lr"]) == sorted(float(x[2:]) for x in lrs)


def test_an_infinite_factor_stops_at_an_interior_optimum_but_still_opens_an_edge():
    new, why = refine.next_lrs({1e-3: 1.5, 3e-3: 1.0, 1e-2: 1.4}, factor=math.inf)
    assert new == [] and "bracketed" in why
    assert refine.next_lrs({1e-3: 1.0, 3e-3: 1.5, 1e-2: 2.0}, factor=math.inf)[0] == [3.3e-4]
    assert refine.parse_options("inf", "2") == (math.inf, 2)
    assert refine.parse_options(None, "2") == (None, 2)


def test_each_experiment_refines_by_the_factor_its_file_states_unless_the_command_line_gives_one(
        tmp_path, fake_launch):
    calls, optimum = fake_launch
    optimum[0] = 2.5e-3  # interior: best LR 3e-3 between 1e-3 and 1e-2
    args = [f"run.root={tmp_path / 'runs'}", "optim.lr=1e-3,3e-3,1e-2", *FULL[1:]]
    _, batch_jobs = sweep.expand_jobs("tiny/batch", args, arms=["full"])
    _, rank_jobs = sweep.expand_jobs("tiny/rank", args, arms=["full"])
    assert refine.experiment_factor(batch_jobs) == math.inf  # hydra.sweeper.refine_factor: .inf
    assert refine.experiment_factor(rank_jobs) == 4.0
    # tiny/batch reads best losses: an interior optimum is enough; tiny/rank reads optimal LRs: midpoints.
    assert sweep.sweep("tiny/batch", args, arms=["full"], refine=True, progress=False) == 0
    assert [c[0] for c in calls] == ["tiny/batch"]
    calls.clear()
    assert sweep.sweep("tiny/rank", args, arms=["full"], refine=True, progress=False) == 0
    assert [c[1] for c in calls] == [[1e-3, 3e-3, 1e-2], [1.7e-3, 5.5e-3]]
    calls.clear()
    # --refine-factor on the command line wins over the file's.
    assert sweep.sweep("tiny/batch", args, arms=["full"], refine=True, refine_factor=4.0, progress=False) == 0
    assert [c[1] for c in calls] == [[], [1.7e-3, 5.5e-3]]


def test_a_bad_refine_factor_in_an_experiment_file_is_a_config_error(tmp_path, monkeypatch):
    _, jobs = grid(tmp_path, "optim.lr=1e-3")
    monkeypatch.setattr("lora_lab.config.compose_dict",
                        lambda *a, **k: SimpleNamespace(hydra=SimpleNamespace(sweeper={"refine_factor": 0.5})))
    with pytest.raises(ConfigError, match=r"hydra.sweeper.refine_factor=0.5 in experiment tiny/rank: expected a number > 1"):
        refine.experiment_factor(jobs)


def test_an_experiment_that_judges_eval_loss_is_refined_by_it(tmp_path, monkeypatch):
    """tiny/capacity (C9) reads each arm's best eval loss: its arms are scored by final_eval_loss, so
    an optimum the train loss puts inside the grid but the eval loss puts at its edge is opened."""
    def job(lr):
        return SimpleNamespace(cfg=SimpleNamespace(optim=SimpleNamespace(lr=lr)))

    rows = {1e-3: {"status": "completed", "final_loss": 0.9, "final_eval_loss": 2.1},
            3e-3: {"status": "completed", "final_loss": 0.5, "final_eval_loss": 2.4},
            1e-2: {"status": "completed", "final_loss": 0.7, "final_eval_loss": 3.0}}
    jobs = [job(lr) for lr in rows]
    by_train = refine.score_runs(jobs, lambda j: rows[j.cfg.optim.lr], maximize=False)
    by_eval = refine.score_runs(jobs, lambda j: rows[j.cfg.optim.lr], maximize=False, column="final_eval_loss")
    assert refine.next_lrs(by_train, factor=math.inf)[0] == []  # interior by train loss
    assert refine.next_lrs(by_eval, factor=math.inf)[0] == [pytest.approx(1e-3 / 3, rel=0.01)]  # an open low edge
    _, capacity = sweep.expand_jobs("tiny/capacity", [f"run.root={tmp_path}"])
    _, rank = sweep.expand_jobs("tiny/rank", [f"run.root={tmp_path}"], arms=["full"])
    assert refine.experiment_score(capacity) == "final_eval_loss" and refine.experiment_score(rank) == "final_loss"
    from lora_lab.results import SUMMARY_KEYS

    assert "final_eval_loss" in SUMMARY_KEYS
    monkeypatch.setattr("lora_lab.config.compose_dict",
                        lambda *a, **k: SimpleNamespace(hydra=SimpleNamespace(sweeper={"refine_score": "accuracy"})))
    with pytest.raises(ConfigError, match=r"hydra.sweeper.refine_score=accuracy in experiment tiny/rank: choose"):
        refine.experiment_score(rank)
