import json
import re
import subprocess

import pytest
import torch

from conftest import LORA_LAB, SMALL
from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, load_data
from lora_lab.tiny.pretrain import _render, corpus_docs, packed, pretrain_docs
from lora_lab.models import load_tokenizer

SMALL_ARCH = ["hidden_size=64", "intermediate_size=128", "num_hidden_layers=2", "num_attention_heads=2",
              "num_key_value_heads=1"]


def test_corpus_is_deterministic_and_mixes_its_kinds():
    docs = corpus_docs(400, 3)
    assert docs == corpus_docs(400, 3) and docs != corpus_docs(400, 4)
    chats = [d for d in docs if isinstance(d, list)]
    texts = [d for d in docs if isinstance(d, str)]
    assert 0.1 < len(chats) / len(docs) < 0.4
    assert any("carry" in t or " + " in t for t in texts) and any("Backwards" in t or "in order" in t for t in texts)
    assert any("####" in t for t in texts) and any("\\boxed{" in t for t in texts)


def test_drill_documents_state_true_table_facts_at_the_asked_fraction():
    assert pretrain_docs(300, 5, 0.0) == corpus_docs(300, 5)  # drill 0 is the plain corpus (the shipped tiny-moe)
    docs = pretrain_docs(800, 5, 0.25)
    plain = corpus_docs(800, 5)
    drills = [d for d in docs if d not in plain]
    assert [d for d in docs if d in plain] == plain  # the corpus stream itself is untouched, in order
    assert abs(len(drills) / len(docs) - 0.25) < 0.01
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "\\times": int.__mul__, "plus": int.__add__,
           "minus": int.__sub__, "times": int.__mul__}
    fact = re.compile(r"\$?(\d+) (\S+) (\d+) (?:=|is) (?:<<[^>]*>>)?(\d+)[.$]*")
    ask = re.compile(r"\D*?\$?(\d+) (\S+) (\d+)\$?\D*")
    lines = [d for d in drills if isinstance(d, str)]
    chats = [d for d in drills if isinstance(d, list)]
    assert len(lines) > 50 and len(chats) > 50
    n = 0
    for line in (ln for d in lines for ln in d.splitlines()):
        a, op, b, c = fact.fullmatch(line).groups()
        assert ops[op](int(a), int(b)) == int(c), line
        n += 1
    assert n > 5 * len(lines)
    for chat in chats:
        assert [m["role"] for m in chat] == ["user", "assistant"] * (len(chat) // 2)
        for q, a in zip(chat[::2], chat[1::2]):
            x, op, y = ask.fullmatch(q["content"]).groups()
            answer = re.findall(r"-?\d+", a["content"])[-1]
            assert ops[op](int(x), int(y)) == int(answer), (q, a)
            assert not q["content"].startswith(("What is", "Compute", "Evaluate", "Find"))  # tiny-math's wordings


@pytest.fixture(scope="module")
def pretraining_tokens() -> set[int]:
    """The token ids of 3000 documents of tiny-llama's pretraining stream (drill included)."""
    tok = load_tokenizer("tiny-llama")
    return {t for d in pretrain_docs(3000, 0, 0.25) for t in _render(tok, d)}


@pytest.mark.parametrize("data", ["tiny-tulu", "tiny-openthoughts", "tiny-facts", "tiny-math"])
def test_pretraining_produces_the_tokens_post_training_answers_with(data, pretraining_tokens):
    """A base model has produced the tokens of a post-training answer before (quoted words,
    capitals, reversed strings, made-up names...). Without the corpus's text skills 4-25% of the
    target tokens of these sets never occurred in pretraining; in a sample of 3000 pretraining
    documents (~0.2M tokens) at most 3% may now be missing."""
    tok, seen = load_tokenizer("tiny-llama"), pretraining_tokens
    cfg = compose([f"data={data}", "data.num_examples=400", "data.eval_size=16"])
    train, _ = load_data(cfg, tok)
    targets = [int(t) for ids, labels in zip(train.ids, train.labels) for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    unseen = sum(t not in seen for t in targets) / len(targets)
    assert len(targets) > 2000 and unseen < 0.03, (data, unseen)


def test_packing_fills_fixed_length_rows():
    tok = load_tokenizer("tiny-llama")
    x = packed(tok, corpus_docs(200, 0), seq_len=64)
    assert x.shape[1] == 64 and x.shape[0] > 10 and x.dtype == torch.long
    assert (x == tok.bos_token_id).any() and int(x.max()) < len(tok)


@pytest.mark.slow
def test_build_tiny_rebuilds_a_small_model_that_learns_and_trains(tmp_path):
    """The same command as the shipped assets, smaller: the model must learn the corpus, and the
    result must work as a local model directory for a LoRA run."""
    args = [LORA_LAB, "build-tiny", "--out", str(tmp_path), "--models", "tiny-llama", "--tokens", "150000",
            "--vocab", "600", "--lr", "5e-3"]
    for o in SMALL_ARCH:
        args += ["--override", o]
    p = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    model_dir = tmp_path / "tiny-llama"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "card.json"):
        assert (model_dir / f).exists(), f
    card = json.loads((model_dir / "card.json").read_text())
    assert 150000 - 32 * 256 < card["tokens_seen"] <= 150000 and card["architecture"]["hidden_size"] == 64
    assert card["eval_loss"] < card["first_loss"] - 1.5, card  # it learned
    run = subprocess.run([LORA_LAB, "train", f"model.name={model_dir}", *SMALL, "train.max_steps=2", "lora.rank=2",
                          f"run.root={tmp_path / 'runs'}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "completed" in run.stdout, run.stderr[-2000:]


def test_build_tiny_rejects_bad_flags():
    p = subprocess.run([LORA_LAB, "build-tiny", "--tokens", "0"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--tokens=0" in p.stderr
    p = subprocess.run([LORA_LAB, "build-tiny", "--drill", "1"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--drill=1.0" in p.stderr


def test_the_width_ladder_ships_with_cards_and_one_recipe():
    """tiny-llama-w64, tiny-llama and tiny-llama-w256: built, loadable, their cards saying how (the
    same depth, drill and tokens per parameter), and all model assets together within 40 MiB."""
    from lora_lab.tiny.presets import TINY_CONFIGS
    from lora_lab.tiny.pretrain import TOKENS_PER_PARAM, WIDTH_LADDER
    from lora_lab.tiny.tokenizer import ASSETS
    from lora_lab.config import TINY_PRESETS

    assert set(TINY_CONFIGS) == set(TINY_PRESETS)
    widths = []
    for name in WIDTH_LADDER:
        card = json.loads((ASSETS / name / "card.json").read_text())
        config = json.loads((ASSETS / name / "config.json").read_text())
        assert card["architecture"]["hidden_size"] == config["hidden_size"] == TINY_CONFIGS[name]["hidden_size"]
        assert config["num_hidden_layers"] == 3 and card["drill"] == 0.25 and card["seed"] == 0
        assert abs(card["tokens_requested"] / card["params"] - TOKENS_PER_PARAM) < 0.01, card
        assert card["eval_loss"] < card["first_loss"] - 4, card  # each rung learned its corpus
        readme = (ASSETS / name / "README.md").read_text()
        assert "width ladder" in readme and f"--models {name}" in readme
        widths.append(config["hidden_size"])
    assert widths == [64, 128, 256]
    size = sum(f.stat().st_size for d in ASSETS.iterdir() if d.name.startswith("tiny-") for f in d.rglob("*"))
    assert size <= 40 * 2**20, f"{size / 2**20:.1f} MiB of tiny model assets"


def test_a_width_ladder_preset_trains(tmp_path):
    run = subprocess.run([LORA_LAB, "train", "model=tiny-llama-w64", *SMALL, "train.max_steps=2", "lora.rank=2",
                          f"run.root={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "completed" in run.stdout, run.stderr[-2000:]
    config = next(tmp_path.rglob("config.yaml")).read_text()
    assert "name: tiny-llama-w64" in config
