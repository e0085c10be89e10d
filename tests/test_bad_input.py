"""Bad input stops with exit code 2 and one line on stderr naming the key and the fix, before any model
loads or anything is written: unknown keys added with `+`, values out of range (non-finite floats,
seeds, sizes), a batch larger than the data, an unusable run.root, a hub model not available
offline, a sweep grid value of the wrong type, and unreadable data files."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import typing
from pathlib import Path

import pytest

from conftest import LORA_LAB
from lora_lab import checks, cli
from lora_lab.config import MAX_GENERATED_EXAMPLES, MAX_SEED, Config, ConfigError, compose, compose_dict, from_dictconfig
from lora_lab.data import DataError, check_rows, load_data, load_rows
from lora_lab.models import check_available, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = ["data.num_examples=64", "data.eval_size=16", "optim.batch_size=8", "train.max_steps=1", "train.eval_every=0",
         "train.checkpoint_every=0", "logger.progress=none"]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """datasets writes an Arrow cache of every file it reads: keep it out of the user's ~/.cache."""
    import datasets.config

    cache = tmp_path_factory.mktemp("hf_datasets_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))


def run_main(capfd, *argv: str) -> tuple[int, list[str]]:
    """lora_lab.cli.main in this process: exit code and the non-empty lines on stderr (the file
    descriptor's, so that a library writing there directly is seen too)."""
    code = cli.main(list(argv))
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def run_cli(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([LORA_LAB, *argv], capture_output=True, text=True, timeout=300, env={**os.environ, **env})


def one_line(p: subprocess.CompletedProcess) -> str:
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stderr)
    return lines[0]


# ----------------------------------------------------------------------------- 9: `+key=value`


@pytest.mark.parametrize("command", ["train", "show-config"])
@pytest.mark.parametrize("override, key", [("+optim.foo=1", "optim.foo"), ("+bogus=1", "bogus"),
                                           ("++optim.foo=1", "optim.foo"), ("+lora.extra.deep=1", "lora.extra")])
def test_an_added_unknown_key_is_rejected_like_a_plain_one(capfd, tmp_path, command, override, key):
    code, lines = run_main(capfd, command, override, f"run.root={tmp_path / 'runs'}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0] == f"lora-lab: config error: {key}: no such key; see conf/ or lora_lab/config.py for the keys"
    assert not (tmp_path / "runs").exists()


def test_a_sweep_rejects_an_added_unknown_key(capfd):
    code, lines = run_main(capfd, "sweep", "tiny/rank", "+optim.foo=1", "--dry-run")
    assert code == 2 and len(lines) == 1 and "optim.foo: no such key" in lines[0], lines


def test_experiment_files_and_hydra_overrides_still_compose(capfd):
    assert compose(["+experiments=tiny/rank"]).run.experiment == "tiny/rank"
    # The hydra node (return_hydra_config) is Hydra's, not a stray key of the run's config.
    assert isinstance(from_dictconfig(compose_dict(["+experiments=tiny/rank"], return_hydra_config=True)), Config)
    code, _ = run_main(capfd, "sweep", "tiny/rank", "hydra.launcher.cpus_per_task=1", "lora.rank=1", "--dry-run")
    assert code == 0


def test_a_plain_dict_with_an_unknown_key_is_rejected():
    with pytest.raises(ConfigError, match=r"^train\.sede: no such key"):
        from_dictconfig({"train": {"sede": 3}})


# ----------------------------------------------------------------------------- 10: values


def test_a_batch_larger_than_the_training_set_stops_at_compose_time(capfd, tmp_path):
    code, lines = run_main(capfd, "train", *SMALL, "optim.batch_size=128", f"run.root={tmp_path / 'runs'}")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("lora-lab: config error: optim.batch_size=128: ") and "data.num_examples=64" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_rl_prompts_per_step_larger_than_the_training_set_stops(capfd, tmp_path):
    code, lines = run_main(capfd, "train", "task=rl", "data=tiny-math", "data.num_examples=8", "rl.prompts_per_step=16",
                           f"run.root={tmp_path / 'runs'}")
    assert code == 2 and len(lines) == 1 and "rl.prompts_per_step=16: " in lines[0], lines


def test_a_sweep_with_a_batch_larger_than_the_data_stops_before_launching(capfd):
    code, lines = run_main(capfd, "sweep", "tiny/batch", "data.num_examples=64", "--dry-run")
    assert code == 2 and len(lines) == 1 and "optim.batch_size=128: " in lines[0], lines


def test_a_real_set_with_fewer_rows_than_a_batch_is_caught_once_its_rows_are_read():
    base = ["data=gsm8k", f"data.path={FIXTURES / 'gsm8k.jsonl'}", "data.num_examples=null", "data.eval_size=4"]
    cfg = compose(base)
    rows = load_rows(cfg.data)  # 24 training rows; a step of the default batch takes 32
    with pytest.raises(DataError, match=r"^optim\.batch_size=32: data\.path=.*gsm8k\.jsonl has 24 usable training rows"):
        check_rows(cfg, rows)
    with pytest.raises(DataError, match=r"^rl\.prompts_per_step=32: "):
        check_rows(compose(["task=rl", *base, "rl.prompts_per_step=32"]), rows)
    check_rows(compose([*base, "optim.batch_size=8"]), rows)


def _float_keys() -> list[str]:
    """Every float key of the schema (Optional[float] included), as section.name."""
    keys = []
    for section, kind in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(kind):
            for name, hint in typing.get_type_hints(kind).items():
                if hint in (float, typing.Optional[float]):
                    keys.append(f"{section}.{name}")
    return keys


# Keys where inf has a documented meaning (the comment on the key in lora_lab/config.py).
INF_MEANS_SOMETHING = {"train.diverge_loss"}


def test_the_float_keys_are_the_ones_checked_below():
    assert {"lora.init_a_scale", "lora.lr_a_mult", "lora.lr_b_mult", "optim.lr", "train.diverge_loss", "rl.temperature",
            "data.max_bad_fraction", "logger.progress_every_s"} <= set(_float_keys())


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_key_rejects_non_finite_values(key, value):
    if value == "inf" and key in INF_MEANS_SOMETHING:
        compose([f"{key}={value}"])
        return
    with pytest.raises(ConfigError) as e:
        compose([f"{key}={value}"])
    msg = str(e.value)
    assert msg.startswith(f"{key}={value}: ") and "\n" not in msg, msg


def test_lora_multipliers_say_finite():
    for key in ("lora.init_a_scale", "lora.lr_a_mult", "lora.lr_b_mult"):
        with pytest.raises(ConfigError, match=rf"^{key}=inf: must be a finite number > 0$"):
            compose([f"{key}=inf"])


@pytest.mark.parametrize("key", ["train.seed", "data.seed", "model.init_seed"])
def test_seeds_are_in_the_range_the_generators_take(key):
    for bad in (-1, MAX_SEED + 1):
        with pytest.raises(ConfigError, match=rf"^{key}={bad}: must be an integer in 0\.\.{MAX_SEED}"):
            compose([f"{key}={bad}"])
    assert compose([f"{key}={MAX_SEED}"])


def test_data_path_is_refused_for_a_generated_set():
    with pytest.raises(ConfigError, match=r"^data\.path='.*gsm8k\.jsonl': data\.path is for real data sets; tiny-\* sets are generated"):
        compose(["data=tiny-tulu", f"data.path={FIXTURES / 'gsm8k.jsonl'}"])


@pytest.mark.parametrize("key", ["data.num_examples", "data.eval_size"])
def test_a_generated_set_has_a_size_cap(key):
    with pytest.raises(ConfigError, match=rf"^{key}={MAX_GENERATED_EXAMPLES + 1}: a generated set has at most 100,000 examples"):
        compose([f"{key}={MAX_GENERATED_EXAMPLES + 1}"])
    assert compose([f"{key}={MAX_GENERATED_EXAMPLES}"])
    # A real set is read lazily: its num_examples is a cap on rows read, not a size to generate.
    assert compose(["data=tulu3", f"data.num_examples={10 * MAX_GENERATED_EXAMPLES}"])


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


def test_a_max_seq_len_too_small_for_any_row_is_caught_from_the_rows_and_tokenizer_alone(tok):
    cfg = compose(["data.num_examples=64", "data.eval_size=16", "optim.batch_size=8", "data.max_seq_len=8"])
    with pytest.raises(DataError, match=r"^data\.max_seq_len=8: no training row of tiny-tulu has an assistant token"):
        check_rows(cfg, load_rows(cfg.data), tok)
    ok = compose(["data.num_examples=64", "data.eval_size=16", "optim.batch_size=8", "data.max_seq_len=64"])
    check_rows(ok, load_rows(ok.data), tok)


def test_an_rl_max_seq_len_shorter_than_every_held_out_prompt_is_caught(tok):
    base = ["task=rl", "data=tiny-math", "data.num_examples=16", "data.eval_size=8"]
    cfg = compose([*base, "data.max_seq_len=8"])
    with pytest.raises(DataError, match=r"^data\.max_seq_len=8: every held-out prompt of tiny-math is longer"):
        check_rows(cfg, load_rows(cfg.data), tok)
    ok = compose([*base, "data.max_seq_len=256"])
    check_rows(ok, load_rows(ok.data), tok)


def test_check_rows_loads_the_tokenizer_when_not_given():
    cfg = compose(["data.num_examples=64", "data.eval_size=16", "optim.batch_size=8", "data.max_seq_len=8"])
    with pytest.raises(DataError, match=r"^data\.max_seq_len=8: "):
        check_rows(cfg, load_rows(cfg.data))


def test_rows_cut_to_nothing_leaving_fewer_than_a_batch_name_the_batch(tok):
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "hello"}]}
    cfg = compose(["data.num_examples=16", "data.eval_size=4", "optim.batch_size=8", "data.max_seq_len=32"])
    with pytest.raises(DataError, match=r"^optim\.batch_size=8: only 4 training rows of tiny-tulu keep an assistant token"):
        load_data(cfg, tok, ([short] * 4 + [long] * 12, [short] * 4))


# ----------------------------------------------------------------------------- 11: run.root, hub models


def test_a_run_root_under_a_file_exits_2_naming_it(tmp_path):
    (tmp_path / "file").write_text("")
    for root in (tmp_path / "file", tmp_path / "file" / "runs"):
        line = one_line(run_cli("train", *SMALL, f"run.root={root}"))
        assert line.startswith(f"lora-lab: config error: run.root='{root}': ") and "writable directory" in line, line
        assert "summary.json" not in line


def test_a_read_only_run_root_is_refused(tmp_path, monkeypatch):
    # Tests run as root here, where chmod does not stop writes: os.access stands in for the filesystem.
    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)
    with pytest.raises(ConfigError, match=r"^run\.root='.*': the directory is not writable; set run\.root="):
        checks.check_run_root(tmp_path)
    with pytest.raises(ConfigError, match=rf"^run\.root='.*': cannot create it, {tmp_path} is not writable"):
        checks.check_run_root(tmp_path / "a" / "b")
    monkeypatch.undo()
    checks.check_run_root(tmp_path / "a" / "b")  # creatable
    assert not (tmp_path / "a").exists()  # a check creates nothing


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_hub_model_not_available_offline_exits_2_naming_it(tmp_path, method):
    line = one_line(run_cli("train", *SMALL, f"method={method}", "model.name=meta-llama/Llama-3.2-1B",
                            f"run.root={tmp_path / 'runs'}", HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub")))
    assert line.startswith("lora-lab: config error: model.name='meta-llama/Llama-3.2-1B': not available offline"), line
    assert "hf download meta-llama/Llama-3.2-1B" in line and "summary.json" not in line
    assert not (tmp_path / "runs").exists()


def _cache_repo(cache: Path, repo: str, files: dict[str, str]) -> None:
    """A model in the hub cache's layout: models--org--name/refs/main -> snapshots/<commit>/<files>."""
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text("0" * 40)
    for name, text in files.items():
        (base / "snapshots" / ("0" * 40) / name).parent.mkdir(parents=True, exist_ok=True)
        (base / "snapshots" / ("0" * 40) / name).write_text(text)


def test_a_cached_hub_model_passes_and_a_partial_one_names_what_is_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lora_lab.config import ModelConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    _cache_repo(tmp_path, "org/whole", {"config.json": "{}", "model.safetensors": ""})
    _cache_repo(tmp_path, "org/config-only", {"config.json": "{}"})
    index = json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}})
    _cache_repo(tmp_path, "org/sharded", {"config.json": "{}", "model.safetensors.index.json": index,
                                          "model-1.safetensors": ""})
    check_available(ModelConfig(name="org/whole"))
    check_available(ModelConfig(name="tiny-llama"))
    with pytest.raises(ConfigError, match=r"^model\.name='org/config-only': not available offline \(.*its weights"):
        check_available(ModelConfig(name="org/config-only"))
    with pytest.raises(ConfigError, match=r"^model\.name='org/sharded': not available offline \(.*shard model-2\.safetensors"):
        check_available(ModelConfig(name="org/sharded"))
    with pytest.raises(ConfigError, match=r"^model\.name='org/whole': .*at revision v2"):
        check_available(ModelConfig(name="org/whole", revision="v2"))


def test_a_finished_run_is_still_skipped_without_the_model_or_a_writable_root(capfd, tmp_path, monkeypatch):
    """A finished run needs neither: relaunching its command only reports it."""
    from huggingface_hub import constants

    from lora_lab.runs import run_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    args = [*SMALL, "model.name=org/not-cached", f"run.root={tmp_path / 'runs'}"]
    d = run_dir(compose(args))
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"run_id": d.name, "status": "completed", "steps": 1, "final_train_loss": 1.0}))
    monkeypatch.setattr(checks.os, "access", lambda path, mode: False)
    code, lines = run_main(capfd, "train", *args)
    assert code == 0 and lines == [f"{d.name}: already completed (final train loss 1.0); skipping"], lines


def test_the_hint_to_summary_json_only_when_the_run_recorded_the_failure(capfd, tmp_path, monkeypatch):
    import lora_lab.launch
    from lora_lab.runs import run_dir

    def fails_early(cfg):
        raise RuntimeError("boom")

    monkeypatch.setattr(lora_lab.launch, "train", fails_early)
    code, lines = run_main(capfd, "train", *SMALL, f"run.root={tmp_path / 'runs'}")
    assert code == 1 and lines == ["lora-lab: run failed: RuntimeError: boom"], lines

    def fails_recorded(cfg):
        d = run_dir(cfg)
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: late"}))
        raise RuntimeError("late")

    monkeypatch.setattr(lora_lab.launch, "train", fails_recorded)
    code, lines = run_main(capfd, "train", *SMALL, f"run.root={tmp_path / 'runs'}")
    record = run_dir(compose([*SMALL, f"run.root={tmp_path / 'runs'}"])) / "summary.json"
    assert code == 1 and lines == [f"lora-lab: run failed: RuntimeError: late (traceback in {record})"], lines
    # A summary.json left by an earlier failure is not this failure's record.
    monkeypatch.setattr(lora_lab.launch, "train", fails_early)
    code, lines = run_main(capfd, "train", *SMALL, f"run.root={tmp_path / 'runs'}")
    assert lines == ["lora-lab: run failed: RuntimeError: boom"], lines


# ----------------------------------------------------------------------------- 12: sweep grid values


@pytest.mark.parametrize("axis, key", [("lora.rank=1,abc", "lora.rank"), ("optim.lr=1e-3,fast", "optim.lr")])
def test_a_grid_value_of_the_wrong_type_is_one_line_and_exit_2(capfd, axis, key):
    code, lines = run_main(capfd, "sweep", "tiny/rank", axis, "--dry-run")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("lora-lab: config error: tiny/rank [") and f"{key}=" in lines[0] and "expected a value of type" in lines[0]


# ----------------------------------------------------------------------------- 13: data files


def _gsm8k_lines() -> list[str]:
    return (FIXTURES / "gsm8k.jsonl").read_text().splitlines()


@pytest.mark.parametrize("name, content, says", [
    ("empty.jsonl", b"", "the file is empty"),
    ("garbage.jsonl", bytes(range(256)) * 8, "line 1 holds binary data"),
    ("latin1.jsonl", "\n".join(_gsm8k_lines()[:2]).encode() + b'\n{"question": "caf\xe9"}\n', "line 3 is not UTF-8 text"),
    ("broken.jsonl", "\n".join([*_gsm8k_lines()[:3], '{"question": "x", "answer', *_gsm8k_lines()[3:6]]).encode(),
     "line 4 is not valid JSON (column 19: Unterminated string"),
    ("list.jsonl", "\n".join([*_gsm8k_lines()[:5], "[1, 2]"]).encode(), "line 6 is a JSON list, not an object"),
    ("garbage.parquet", b"PAR1" + bytes(range(200)), "not a parquet file"),
    ("array.json", b'[{"question": "q", "answer": "#### 1"},\n{"question": "r"\n]', "line 3 is not valid JSON"),
])
def test_an_unreadable_data_file_is_one_line_naming_file_and_line(capfd, tmp_path, name, content, says):
    path = tmp_path / name
    path.write_bytes(content)
    code, lines = run_main(capfd, "train", "data=gsm8k", f"data.path={path}", "data.eval_size=2", "optim.batch_size=2",
                           "data.num_examples=4", f"run.root={tmp_path / 'runs'}", "logger.progress=none")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"lora-lab: data error: data.path={path}: {says}"), lines
    assert not (tmp_path / "runs").exists()


def test_a_bad_file_in_a_data_directory_is_named(capfd, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text((FIXTURES / "gsm8k.jsonl").read_text())
    (tmp_path / "d" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{oops}\n')
    code, lines = run_main(capfd, "train", "data=gsm8k", f"data.path={tmp_path / 'd'}", "data.eval_size=2",
                           "optim.batch_size=2", f"run.root={tmp_path / 'runs'}", "logger.progress=none")
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"lora-lab: data error: data.path={tmp_path / 'd'}: test.jsonl: line 2 is not valid JSON"), lines


# ----------------------------------------------------------------------------- 2: paths stay inside


@pytest.mark.parametrize("bad", ["/etc/cron.d/x", "../x", "a/../../x", "/tmp"])
def test_run_experiment_stays_below_run_root(capfd, tmp_path, bad):
    code, lines = run_main(capfd, "train", f"run.experiment={bad}", f"run.root={tmp_path / 'runs'}")
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"lora-lab: config error: run.experiment={bad!r}: a name below run.root")
    assert compose(["run.experiment=tiny/rank"]).run.experiment == "tiny/rank"


@pytest.mark.parametrize("bad", ["../x", "../../etc/passwd", "/etc/x", "sub/local"])
def test_a_cluster_profile_is_a_name_not_a_path(capfd, tmp_path, monkeypatch, bad):
    from lora_lab import slurm

    (tmp_path / "slurm").mkdir()
    (tmp_path / "slurm" / "local.yaml").write_text("partition: debug\n")
    (tmp_path / "x.yaml").write_text("partition: planted\n")  # what cluster=../x would read
    monkeypatch.setattr(slurm, "SLURM_DIR", tmp_path / "slurm")
    code, lines = run_main(capfd, "sweep", "tiny/rank", f"cluster={bad}", "launcher=slurm", "--dry-run")
    assert code == 2 and len(lines) == 1 and f"cluster={bad}: a profile name of slurm/" in lines[0]
