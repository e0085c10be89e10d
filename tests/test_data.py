import pytest
import torch

from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, encode_chat, encode_chats, order_seed, tokenize
from lora_lab.tiny.world import load_tiny_tulu, tiny_tulu_rows
from lora_lab.models import load_tokenizer


def test_tiny_tulu_is_deterministic_and_in_tulu_schema():
    a, b = tiny_tulu_rows(50, 3), tiny_tulu_rows(50, 3)
    assert a == b and a != tiny_tulu_rows(50, 4)
    for row in a:
        roles = [m["role"] for m in row["messages"]]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])


def test_held_out_split_is_disjoint_and_independent_of_size():
    cfg = compose(["data.num_examples=300", "data.eval_size=40"]).data
    train, held = load_tiny_tulu(cfg)
    assert len(train) == 300 and len(held) == 40
    assert not {str(r["messages"]) for r in train} & {str(r["messages"]) for r in held}
    train2, held2 = load_tiny_tulu(compose(["data.num_examples=100", "data.eval_size=40"]).data)
    assert held2 == held and train2 == train[:100]


def test_labels_cover_exactly_the_assistant_turns():
    tok = load_tokenizer("tiny-llama")
    row = {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 2 plus 2?"},
                        {"role": "assistant", "content": "2 plus 2 is 4."}, {"role": "user", "content": "Reverse 'ab'."},
                        {"role": "assistant", "content": "'ab' reversed is 'ba'."}]}
    ids, labels = encode_chat(tok, row["messages"], 512)
    target = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert target == "2 plus 2 is 4.<|end|>'ab' reversed is 'ba'.<|end|>"
    assert tok.decode(ids).startswith("<|bos|><|system|>\nBe exact.")


def test_without_generation_markers_the_targets_are_those_of_the_markers():
    """Templates without {% generation %} (most base models) find assistant tokens by character offsets
    (lora_lab/chat.py): on the tiny template the same targets as its generation markers."""
    tok = load_tokenizer("tiny-llama")
    plain = load_tokenizer("tiny-llama")
    plain.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    for row in tiny_tulu_rows(20, 1):
        assert encode_chat(tok, row["messages"], 512) == encode_chat(plain, row["messages"], 512)


def test_batched_encoding_equals_one_at_a_time():
    """encode_chats runs the tokenizer on chunks of conversations (with uneven lengths, system
    prompts and two-turn chats in one chunk); ids and labels must be those of encode_chat."""
    tok = load_tokenizer("tiny-llama")
    convs = [row["messages"] for row in tiny_tulu_rows(70, 5)]
    assert len({len(c) for c in convs}) > 1
    assert encode_chats(tok, convs, chunk=32) == [encode_chat(tok, c, None) for c in convs]
    plain = load_tokenizer("tiny-llama")  # no generation blocks: the offsets path
    plain.chat_template = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert encode_chats(plain, convs[:5]) == [encode_chat(plain, c, None) for c in convs[:5]]


def test_truncation_and_collate_padding():
    tok = load_tokenizer("tiny-llama")
    split = tokenize(tiny_tulu_rows(10, 0), tok, max_len=20)
    assert all(len(x) <= 20 for x in split.ids)
    batch = collate(split, [0, 1, 2], tok.pad_token_id)
    n = batch["input_ids"].shape[1]
    for row, i in enumerate([0, 1, 2]):
        k = len(split.ids[i])
        assert batch["attention_mask"][row].sum() == k
        assert torch.all(batch["labels"][row, k:] == IGNORE_INDEX) and torch.all(batch["input_ids"][row, k:n] == tok.pad_token_id)


def test_batch_order_depends_on_seed_and_data_only():
    lora, full = compose(["method=lora", "lora.rank=2", "optim.lr=5e-3"]), compose(["method=full", "optim.lr=1e-4"])
    assert order_seed(lora) == order_seed(full)
    assert order_seed(lora) != order_seed(compose(["train.seed=1"]))
    assert order_seed(lora) != order_seed(compose(["data.num_examples=512"]))
    o = BatchOrder(100, 16, order_seed(lora))
    assert o.steps_per_epoch == 6
    epoch0 = [i for s in range(6) for i in o.batch(s)]
    assert len(set(epoch0)) == 96 and all(len(o.batch(s)) == 16 for s in range(20))
    assert o.batch(6) != o.batch(0) and o.epoch_of(6) == 1
    assert BatchOrder(100, 16, order_seed(full)).batch(3) == o.batch(3)


def test_new_data_keys_at_their_old_behaviour_keep_run_ids_and_the_batch_order():
    """data.truncation=head (and chat_template=null) is what every earlier run did: such runs keep their
    ids and their batch order (the order seed is the one computed before the keys existed)."""
    import hashlib
    import json

    from lora_lab.runs import run_id

    cfg = compose(["train.seed=3"])
    before = {k: v for k, v in vars(cfg.data).items() if k not in ("chat_template", "truncation", "eval_unseen")}
    key = json.dumps({"seed": 3, "data": before}, sort_keys=True, default=str)
    assert order_seed(cfg) == int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**62 - 1)
    assert order_seed(compose(["train.seed=3", "data.truncation=drop"])) != order_seed(cfg)
    assert run_id(compose(["data.truncation=head"])) == run_id(compose([]))
    assert run_id(compose(["data.truncation=drop"])) != run_id(compose([]))
    assert run_id(compose(["run.token_cache=false"])) == run_id(compose([]))


# ----------------------------------------------------------------------------- chat templates

TWO_TURNS = [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "First answer."},
             {"role": "user", "content": "Second question?"}, {"role": "assistant", "content": "Second answer."}]


@pytest.mark.parametrize("preset, end", [("llama3", "<|eot_id|>"), ("chatml", "<|im_end|>")])
def test_a_preset_template_trains_on_every_answer_and_on_no_user_turn(preset, end):
    from lora_lab.config import compose
    from lora_lab.data import use_chat_template
    from lora_lab.models import load_tokenizer

    tok = use_chat_template(load_tokenizer("tiny-llama"), compose([f"data.chat_template={preset}"]).data)
    ids, labels = encode_chat(tok, TWO_TURNS, None)
    targets = tok.decode([t for t in labels if t != IGNORE_INDEX])
    assert targets == f"First answer.{end}Second answer.{end}"  # the turn's terminator is learned too
    assert tok.decode(ids).count("question?") == 2


def test_a_base_tokenizer_without_a_template_stops_before_the_model_loads(tmp_path):
    """A base model's tokenizer ships no chat template: exit 2 naming data.chat_template, before any
    model loads; with a preset template the run trains."""
    import json
    import shutil
    import subprocess

    from conftest import LORA_LAB, SMALL
    from lora_lab.models import ASSETS

    base = tmp_path / "base-model"
    shutil.copytree(ASSETS / "tiny-llama", base)
    (base / "chat_template.jinja").unlink()
    cfg = json.loads((base / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(cfg))
    (base / "model.safetensors").write_bytes(b"not weights: a run that loads them fails")
    args = [LORA_LAB, "train", *SMALL, f"model.name={base}", f"run.root={tmp_path / 'runs'}", "train.max_steps=1"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "data.chat_template=null" in lines[0], p.stderr
    shutil.copy(ASSETS / "tiny-llama" / "model.safetensors", base / "model.safetensors")
    # the tiny tokenizer spells llama3's header tokens out as text: longer sequences
    p = subprocess.run([*args, "data.chat_template=llama3", "data.max_seq_len=256"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]


def test_a_chat_template_key_names_a_preset_or_a_jinja_file(tmp_path):
    from lora_lab.config import ConfigError, compose

    with pytest.raises(ConfigError, match=r"^data.chat_template='nope': choose a preset \(llama3, chatml\)"):
        compose(["data.chat_template=nope"])
    own = tmp_path / "mine.jinja"
    own.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert compose([f"data.chat_template={own}"]).data.chat_template == str(own)
