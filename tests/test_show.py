"""`lora-lab show-data` (lora_lab/show.py) and `lora-lab fetch` (lora_lab/fetch.py), offline."""

import json
from pathlib import Path

import pytest

from lora_lab import cli
from lora_lab.show import CLOSE, OPEN

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    """show-data reads data only: building a model fails the test."""
    import lora_lab.models

    def refuse(*args, **kwargs):
        raise AssertionError("show-data built a model")

    monkeypatch.setattr(lora_lab.models, "build_model", refuse)


def shown(capsys, *args: str) -> list[dict]:
    assert cli.main(["show-data", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_first_rows_with_their_targets(capsys):
    from lora_lab.config import compose
    from lora_lab.data import _messages, load_rows

    rows = shown(capsys)
    train, _ = load_rows(compose([]).data)
    assert len(rows) == 3
    for row, data in zip(rows, train[:3]):
        msgs = _messages(data)
        assert row["targets"] == [m["content"] + "<|end|>" for m in msgs if m["role"] == "assistant"]
        assert all(m["content"] in row["text"] for m in msgs) and row["trains"] and not row["truncated"]
        assert row["target_tokens"] < row["tokens"]
    assert len(shown(capsys, "--rows", "5")) == 5


def test_the_text_marks_each_target_span(capsys):
    assert cli.main(["show-data", "--rows=1"]) == 0
    out = capsys.readouterr().out
    header, row = out.split("\n\n", 1)
    assert header.startswith("# data=tiny-tulu model=tiny-llama data.max_seq_len=256 data.truncation=head")
    first = row.splitlines()[0]
    assert first.startswith("## row 0: ") and first.endswith(" target, whole")
    assert row.count(OPEN) == row.count(CLOSE) >= 1 and f"<|end|>{CLOSE}" in row


@pytest.mark.parametrize("name, mark", [("gsm8k", "#### "), ("math", "\\boxed{"), ("tulu3", ""), ("openthoughts3", "<think>"),
                                        ("deepmath", "\\boxed{")])
def test_real_sets_from_local_files(capsys, tmp_path, monkeypatch, name, mark):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf"))  # its Arrow files: not in ~/.cache
    rows = shown(capsys, f"data={name}", f"data.path={FIXTURES / f'{name}.jsonl'}", "data.eval_size=2", "data.max_seq_len=4096")
    assert rows and all(row["targets"] and mark in "".join(row["targets"]) for row in rows)


def test_rows_cut_or_dropped_say_so(capsys):
    cut = shown(capsys, "data.max_seq_len=16")
    assert all(r["truncated"] and r["tokens"] > 16 for r in cut)
    dropped = shown(capsys, "data.max_seq_len=16", "data.truncation=drop")
    assert all(not r["trains"] and r["dropped"] == "longer than data.max_seq_len" for r in dropped)


def test_rl_prompts_have_no_targets(capsys):
    rows = shown(capsys, "task=rl", "data=tiny-math", "--rows", "2")
    assert len(rows) == 2 and all(r["targets"] == [] and r["text"].endswith("<|assistant|>\n") for r in rows)


@pytest.mark.parametrize("args, message", [
    (["data.max_seq_len=abc"], "data.max_seq_len"),
    (["data.truncation=tail"], "data.truncation='tail': choose one of head, drop"),
    (["--rows", "0"], "--rows=0: must be a whole number >= 1"),
    (["--bogus"], "--bogus: unknown option"),
])
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    assert cli.main(["show-data", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and message in err[0]


def test_help(capsys):
    assert cli.main(["show-data", "--help"]) == 0
    assert "--rows N" in capsys.readouterr().out


# ----------------------------------------------------------------------------- fetch


def test_fetch_dry_run_lists_each_model_and_data_set_once(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["fetch", "--dry-run", "experiment=paper/rank_tulu3_llama8b"]) == 0
    out = capsys.readouterr().out
    assert out.count("meta-llama/Llama-3.1-8B") == 1 and out.count("allenai/tulu-3-sft-mixture") == 1
    assert "need 1 model and 1 data set split" in out and "dry run: nothing fetched" in out


def test_fetch_of_a_tiny_experiment_needs_nothing(capsys):
    assert cli.main(["fetch", "tiny/rank"]) == 0
    assert "tiny/rank: nothing to fetch" in capsys.readouterr().out


def test_fetch_downloads_each_once(capsys, monkeypatch):
    from lora_lab import hub

    got = []
    monkeypatch.setattr(hub, "offline", lambda: False)
    monkeypatch.setattr(hub, "model_cached", lambda name, revision=None: False)
    monkeypatch.setattr(hub, "fetch_model", lambda name, revision, remote: got.append(("model", name, revision)))
    monkeypatch.setattr(hub, "fetch_dataset", lambda hub_id, config, split: got.append(("data", hub_id, config, split)))
    assert cli.main(["fetch", "paper/rl_math_llama8b", "lora.rank=1,8"]) == 0
    assert got == [("model", "meta-llama/Llama-3.1-8B", None),
                   ("data", "DigitalLearningGmbH/MATH-lighteval", "default", "train"),
                   ("data", "DigitalLearningGmbH/MATH-lighteval", "default", "test")]
    assert "done" in capsys.readouterr().out


def test_fetch_needs_the_network(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["fetch", "model=llama-3.2-1b", "data=gsm8k"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the Hugging Face hub is offline here" in err[0]


def test_fetch_skips_local_files_and_bad_input_exits_2(capsys):
    assert cli.main(["fetch", "data=gsm8k", f"data.path={FIXTURES / 'gsm8k.jsonl'}"]) == 0
    assert "nothing to fetch" in capsys.readouterr().out
    assert cli.main(["fetch", "paper/nope"]) == 2
    assert cli.main(["fetch", "model.name=not a model"]) == 2
