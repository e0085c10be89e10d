"""Real data set loaders (tulu3, openthoughts3, math, gsm8k, deepmath), offline: small files in each
set's exact schema (tests/fixtures/<name>.jsonl; <name>_malformed.jsonl adds a few bad rows) read
through data.path, and the hub path checked for its offline error."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from lora_lab import hub
from lora_lab.config import CONF_DIR, ConfigError, compose
from lora_lab.data import (DATASETS, IGNORE_INDEX, REAL_SETS, BadRow, DataError, Rows, _messages, encode_chat, load_rows,
                           tokenize)
from lora_lab.models import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
NAMES = sorted(REAL_SETS)
# Bad rows in tests/fixtures/<name>_malformed.jsonl, which also holds 12 good rows.
MALFORMED = {"tulu3": 4, "openthoughts3": 3, "math": 3, "gsm8k": 3, "deepmath": 3}


def file_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def canon(rows) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


@pytest.fixture(scope="module", autouse=True)
def datasets_cache(tmp_path_factory):
    """datasets writes an Arrow cache of every file it reads: keep it out of the user's ~/.cache,
    and make sure no test passes thanks to a real set someone has cached."""
    import datasets.config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets_cache")))
        yield


@pytest.fixture
def real(tmp_path):
    """compose() for a real set read from a fixture file (default tests/fixtures/<name>.jsonl)."""

    def make(name: str, *overrides: str, path: Path | None = None):
        return compose([f"data={name}", f"data.path={path or FIXTURES / f'{name}.jsonl'}",
                        f"run.root={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-llama")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_every_data_preset_composes(preset):
    data = compose([f"data={preset}"]).data
    assert data.name == preset
    if preset in REAL_SETS:
        assert data.hub_id and data.split == "train" and data.max_seq_len >= 512


@pytest.mark.parametrize("name", NAMES)
def test_each_set_loads_every_row_of_a_local_file_in_its_own_schema(real, name):
    train, held = DATASETS[name](real(name, "data.eval_size=4", "data.num_examples=null").data)
    assert isinstance(train, Rows) and len(held) == 4
    # The rows come back as they are in the file: the set's own schema, nothing added or lost.
    assert canon([*train, *held]) == canon(file_rows(FIXTURES / f"{name}.jsonl"))


def test_subset_is_seeded_held_out_rows_fixed_and_disjoint(real):
    def load(*overrides):
        train, held = load_rows(real("gsm8k", "data.eval_size=5", *overrides).data)
        return list(train), list(held)

    train, held = load("data.num_examples=12")
    assert len(train) == 12 and len(held) == 5
    assert (train, held) == load("data.num_examples=12")
    assert not {r["question"] for r in train} & {r["question"] for r in held}
    # num_examples never changes the held-out rows; a smaller subset is a prefix of a larger one.
    small_train, small_held = load("data.num_examples=6")
    assert small_held == held and small_train == train[:6]
    assert load("data.num_examples=12", "data.seed=7") != (train, held)


def test_validation_rows_come_after_the_held_out_ones(real):
    """RL's rl.val_size: the next usable rows of the seeded walk after the held-out (test) rows, which
    stay what they were; training rows are drawn after both."""
    def load(*overrides, val_size=0):
        return [list(split) for split in load_rows(real("gsm8k", "data.eval_size=5", "data.num_examples=12", *overrides).data,
                                                   val_size)]

    train, held = load()
    val_train, val_held, val = load(val_size=4)
    assert val_held == held and len(val) == 4 and len(val_train) == 12
    # The walk: held-out rows, then validation rows, then training rows.
    assert val == train[:4] and val_train[:8] == train[4:]
    questions = [{r["question"] for r in split} for split in (val_train, val_held, val)]
    assert not questions[2] & questions[0] and not questions[2] & questions[1]
    with pytest.raises(DataError, match=r"^rl\.val_size=40: .* only \d+ usable rows to hold out for validation"):
        load(val_size=40)
    with pytest.raises(DataError, match=r"^data\.eval_size=5 and rl\.val_size=23: .* no usable rows left to train on; lower them"):
        load(val_size=23)


def test_rows_hold_indices_not_text(real):
    train, _ = load_rows(real("openthoughts3", "data.eval_size=4", "data.num_examples=5").data)
    assert len(train.indices) == 5 and all(isinstance(i, int) for i in train.indices)
    assert train[0] == train.ds[train.indices[0]] and list(train[1:3]) == [train[1], train[2]]


def _write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


@pytest.mark.parametrize("layout", ["hub-snapshot", "plain"])
def test_directory_with_a_test_split(real, tmp_path, layout):
    rows = file_rows(FIXTURES / "gsm8k.jsonl")
    train_rows, test_rows = rows[:20], rows[20:]
    root = tmp_path / layout
    if layout == "hub-snapshot":  # what `hf download --repo-type dataset openai/gsm8k --local-dir` gives
        _write_parquet(train_rows, root / "main" / "train-00000-of-00001.parquet")
        _write_parquet(test_rows, root / "main" / "test-00000-of-00001.parquet")
        _write_parquet(rows[:3], root / "socratic" / "train-00000-of-00001.parquet")
        _write_parquet(rows[:3], root / "socratic" / "test-00000-of-00001.parquet")
        (root / "README.md").write_text(
            "---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n    path: main/train-*\n"
            "  - split: test\n    path: main/test-*\n- config_name: socratic\n  data_files:\n  - split: train\n"
            "    path: socratic/train-*\n  - split: test\n    path: socratic/test-*\n---\n# gsm8k\n")
    else:
        for split, part in (("train", train_rows), ("test", test_rows)):
            (root / f"{split}.jsonl").parent.mkdir(parents=True, exist_ok=True)
            (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    train, held = load_rows(real("gsm8k", "data.eval_split=test", "data.eval_size=4", path=root).data)
    assert len(train) == 20 and canon(train) == canon(train_rows)
    assert len(held) == 4 and set(canon(held)) <= set(canon(test_rows))


def test_eval_split_of_a_single_file_is_a_clear_error(real):
    with pytest.raises(DataError, match=r"^data.eval_split='test': data.path is a single file"):
        load_rows(real("gsm8k", "data.eval_split=test").data)


def test_a_file_in_another_sets_schema_is_refused(real):
    with pytest.raises(DataError, match=r"^data=gsm8k: data.path=.*tulu3.jsonl has columns .*not gsm8k's schema"):
        load_rows(real("gsm8k", path=FIXTURES / "tulu3.jsonl").data)


def test_levels_keep_only_those_math_levels(real):
    train, held = load_rows(real("math", "data.levels=[1,2]", "data.eval_size=2", "data.num_examples=null").data)
    assert {r["level"] for r in [*train, *held]} == {"Level 1", "Level 2"}
    with pytest.raises(DataError, match=r"^data.levels=\[1\]: gsm8k rows have no 'level' column"):
        load_rows(real("gsm8k", "data.levels=[1]").data)


def test_too_few_rows_to_hold_out_names_eval_size(real):
    with pytest.raises(DataError, match=r"^data.eval_size=40: .* has only 28 usable rows"):
        load_rows(real("gsm8k", "data.eval_size=40").data)


@pytest.mark.parametrize("row, messages", [
    ({"id": "a", "source": "s", "messages": [{"role": "system", "content": ""}, {"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]},
     [("user", "Hi"), ("assistant", "Hello!")]),  # an empty system prompt is dropped, not the row
    ({"difficulty": 3, "source": "s", "domain": "math",
      "conversations": [{"from": "system", "value": "Think."}, {"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "<think>easy</think> 2"}]},
     [("system", "Think."), ("user", "1+1?"), ("assistant", "<think>easy</think> 2")]),
    ({"question": "Tom has 2 cats and gets 1 more. How many?", "answer": "2 + 1 = <<2+1=3>>3\n#### 3"},
     [("user", "Tom has 2 cats and gets 1 more. How many?"), ("assistant", "2 + 1 = <<2+1=3>>3\n#### 3")]),
    ({"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "level": "Level 1", "type": "Prealgebra"},
     [("user", "What is $1+1$?"), ("assistant", "$1+1=\\boxed{2}$.")]),
    ({"question": "Compute $2^3$.", "final_answer": "8", "difficulty": 1.0, "topic": "t", "r1_solution_1": "2*2*2 = 8.\n\\boxed{8}",
      "r1_solution_2": "x", "r1_solution_3": "y"},
     [("user", "Compute $2^3$."), ("assistant", "2*2*2 = 8.\n\\boxed{8}")]),
    ({"question": "Compute $2^3$.", "final_answer": "8", "difficulty": 1.0, "topic": "t"},
     [("user", "Compute $2^3$."), ("assistant", "The final answer is $\\boxed{8}$.")]),
])
def test_rows_become_chat_messages_by_schema(row, messages):
    assert [(m["role"], m["content"]) for m in _messages(row)] == messages


@pytest.mark.parametrize("row, why", [
    ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}, "messages[1] (assistant) has empty content"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "ok"}]}, "messages[0].content is int"),
    ({"messages": None, "id": "x"}, "no 'messages'"),
    ({"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]}, "unknown from 'bot'"),
    ({"question": "2+2?", "answer": "It is 4."}, "does not end with '#### <number>'"),
    ({"question": "2+2?", "answer": 4}, "'answer' is int"),
    ({"problem": "2+2?", "solution": "It is 4."}, "no \\boxed"),
    ({"problem": "2+2?", "solution": None, "level": "Level 1"}, "no 'solution'"),
    ({"question": "2+2?", "final_answer": "", "r1_solution_1": "4"}, "empty 'final_answer'"),
    ({"text": "plain text"}, "no known schema"),
])
def test_malformed_rows_say_why(row, why):
    with pytest.raises(BadRow) as e:
        _messages(row)
    assert why in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_assistant_labels_hold_the_answer_not_the_question(name, tok):
    answer_mark = {"gsm8k": "#### ", "math": "\\boxed{", "deepmath": "\\boxed{"}.get(name)
    for row in file_rows(FIXTURES / f"{name}.jsonl")[:6]:
        msgs = _messages(row)
        ids, labels = encode_chat(tok, msgs, 4096)
        target = tok.decode([t for t in labels if t != IGNORE_INDEX])
        assert target == "".join(m["content"] + "<|end|>" for m in msgs if m["role"] == "assistant")
        assert all(m["content"] not in target for m in msgs if m["role"] != "assistant")
        if answer_mark:
            assert answer_mark in target


def test_truncation_keeps_the_head_and_drops_rows_without_a_target(tok, capsys):
    rows = file_rows(FIXTURES / "gsm8k.jsonl")
    full = [encode_chat(tok, _messages(r), None) for r in rows]
    split = tokenize(rows, tok, 64, "data.gsm8k train")
    kept = [f for f in full if any(t != IGNORE_INDEX for t in f[1][1:64])]
    assert 0 < len(split) == len(kept) < len(rows)
    assert [x.tolist() for x in split.ids] == [f[0][:64] for f in kept]  # the head, unchanged
    cut = sum(len(f[0]) > 64 for f in full)
    assert capsys.readouterr().err.strip() == (f"data.gsm8k train: truncated {cut} of {len(rows)} rows to data.max_seq_len=64 "
                                               f"tokens (tail dropped); dropped {len(rows) - len(kept)} left with no assistant token")


def test_truncation_drop_keeps_only_whole_rows(tok, capsys):
    rows = file_rows(FIXTURES / "gsm8k.jsonl")
    full = [encode_chat(tok, _messages(r), None) for r in rows]
    split = tokenize(rows, tok, 64, "data.gsm8k train", truncation="drop")
    whole = [f for f in full if len(f[0]) <= 64]
    assert 0 < len(split) == len(whole) < len(rows)
    assert [(x.tolist(), y.tolist()) for x, y in zip(split.ids, split.labels)] == [(i, l) for i, l in whole]
    assert capsys.readouterr().err.strip() == (f"data.gsm8k train: dropped {len(rows) - len(whole)} of {len(rows)} rows longer "
                                               f"than data.max_seq_len=64 tokens (data.truncation=drop)")


def test_truncation_drop_that_leaves_no_row_stops_before_the_model_loads(real, tok):
    from lora_lab.data import check_rows, load_data

    cfg = real("gsm8k", "data.eval_size=4", "data.max_seq_len=40", "data.truncation=drop", "optim.batch_size=4")
    rows = load_rows(cfg.data)
    with pytest.raises(DataError, match=r"^data.truncation=drop: every training row of gsm8k is longer than "
                                        r"data.max_seq_len=40 tokens; raise data.max_seq_len, or set data.truncation=head"):
        check_rows(cfg, rows, tok)
    with pytest.raises(DataError, match=r"^data.truncation=drop: every training row"):
        load_data(cfg, tok, rows)
    check_rows(real("gsm8k", "data.eval_size=4", "data.max_seq_len=40", "optim.batch_size=4"), rows, tok)  # head: the heads train


@pytest.mark.parametrize("name", NAMES)
def test_malformed_rows_are_counted_skipped_and_reported(real, name, capsys):
    path = FIXTURES / f"{name}_malformed.jsonl"
    cfg = real(name, "data.eval_size=2", "data.num_examples=null", "data.max_bad_fraction=0.5", path=path).data
    train, held = load_rows(cfg)
    bad = MALFORMED[name]
    assert len(train) + len(held) == 12 and canon([*train, *held]) == canon(r for r in file_rows(path) if _is_good(r))
    lines = [line for line in capsys.readouterr().err.splitlines() if "malformed" in line]
    assert len(lines) == 1
    assert re.fullmatch(rf"data\.{name}: skipped {bad} of {12 + bad} malformed rows \(first: train row \d+: .+\)", lines[0])


def _is_good(row: dict) -> bool:
    try:
        _messages(row)
        return True
    except BadRow:
        return False


def test_too_many_malformed_rows_fail_with_one_line(real):
    with pytest.raises(DataError) as e:
        load_rows(real("tulu3", "data.eval_size=2", path=FIXTURES / "tulu3_malformed.jsonl").data)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.tulu3: 4 of ") and "data.max_bad_fraction=0.01" in msg
    assert re.search(r"\(first: train row \d+: ", msg)


@pytest.mark.parametrize("name", NAMES)
def test_a_set_not_available_offline_fails_fast_naming_the_way_out(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = compose([f"data={name}"]).data
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        load_rows(data)
    msg = str(e.value)
    assert time.monotonic() - t0 < 10
    assert "\n" not in msg and msg.startswith(f"data={name}: {data.hub_id}") and "is not available offline" in msg
    assert f"`hf download --repo-type dataset {data.hub_id} --local-dir <dir>`" in msg and "data.path=" in msg


def test_an_unreachable_hub_counts_as_offline(monkeypatch):
    """No offline variable set, but no network: no ~25 s of retries before the same one line."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"^data=gsm8k: openai/gsm8k \(main\) is not available offline"):
        load_rows(compose(["data=gsm8k"]).data)
    assert time.monotonic() - t0 < 10


def test_a_cached_hub_set_loads_at_once_with_no_network(monkeypatch, tmp_path):
    """A node without network whose datasets cache holds the set (loaded once where there was
    network) uses the cache without waiting on the hub. The entry is laid out as datasets 5 does:
    <cache>/openai___gsm8k/main/0.0.0/<hash>/gsm8k-train.arrow."""
    import datasets

    rows = file_rows(FIXTURES / "gsm8k.jsonl")
    snapshot = tmp_path / "gsm8k"
    _write_parquet(rows, snapshot / "main" / "train-00000-of-00001.parquet")
    (snapshot / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n"
                                        "    path: main/train-*\n---\n")
    built = Path(datasets.load_dataset(str(snapshot), "main", split="train").cache_files[0]["filename"]).parent
    shutil.copytree(built, Path(datasets.config.HF_DATASETS_CACHE) / "openai___gsm8k" / "main" / "0.0.0" / built.name)
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    t0 = time.monotonic()
    train, held = load_rows(compose(["data=gsm8k", "data.eval_size=4"]).data)
    assert time.monotonic() - t0 < 10 and canon([*train, *held]) == canon(rows)


def test_a_real_set_needs_a_hub_id_or_a_path():
    with pytest.raises(ConfigError, match=r"^data.hub_id=None: data=gsm8k needs a hub id"):
        compose(["data=gsm8k", "data.hub_id=null"])


def test_cli_exits_2_on_a_data_error_before_any_run_directory(tmp_path, capsys):
    from lora_lab.cli import main

    code = main(["train", "data=gsm8k", f"data.path={FIXTURES / 'gsm8k_malformed.jsonl'}", "data.eval_size=2",
                 f"run.root={tmp_path / 'runs'}", "logger.progress=none"])
    assert code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("lora-lab: data error: data.gsm8k: 3 of 15 rows are malformed")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", NAMES)
def test_training_runs_end_to_end_on_each_set(real, name):
    from lora_lab.launch import train

    cfg = real(name, "train.max_steps=2", "optim.batch_size=4", "data.eval_size=4", "data.max_seq_len=128", "logger.progress=none")
    summary = train(cfg)
    assert summary["status"] == "completed" and summary["steps"] == 2 and summary["final_eval_loss"] > 0
