"""Assistant masks for any chat template (lora_lab/chat.py): generation markers, character offsets,
prefixes; Qwen3's real template (tests/fixtures/qwen3_chat_template.jinja), which rewrites earlier
turns, through `lora-lab show-data --json`."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tokenizers import AddedToken

from lora_lab.chat import CHAT_TEMPLATE_DIR, IGNORE_INDEX, Unverifiable, by_offsets, by_prefixes, encode_chat
from lora_lab.config import ConfigError
from lora_lab.models import ASSETS, load_tokenizer
from lora_lab.tiny.world import tiny_tulu_rows

FIXTURES = Path(__file__).parent / "fixtures"
QWEN3 = FIXTURES / "qwen3_chat_template.jinja"
TWO_TURNS = [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "First answer."},
             {"role": "user", "content": "Second question?"}, {"role": "assistant", "content": "Second answer."}]


def targets(tok, labels) -> str:
    return tok.decode([t for t in labels if t != IGNORE_INDEX])


def with_template(text: str):
    tok = load_tokenizer("tiny-llama")
    tok.chat_template = text
    return tok


def qwen3_tokenizer():
    """The tiny tokenizer with Qwen3's template and Qwen3's chat tokens: <|im_start|> and <|im_end|>
    special, <think> and </think> plain added tokens, as in Qwen3's tokenizer.json."""
    tok = with_template(QWEN3.read_text())
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return tok


def stripped(template: str) -> str:
    return (template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
            .replace("{%- generation %}", "").replace("{%- endgeneration %}", ""))


@pytest.mark.parametrize("preset", ["llama3", "chatml", "tiny"])
def test_offsets_find_the_targets_the_generation_markers_mark(preset):
    """Without its {% generation %} markers, each shipped template gives the same ids and targets through
    offsets, also for contents with leading and trailing whitespace (llama3's template trims them)."""
    marked = load_tokenizer("tiny-llama")
    if preset != "tiny":
        marked.chat_template = (CHAT_TEMPLATE_DIR / f"{preset}.jinja").read_text()
    plain = with_template(stripped(marked.chat_template))
    convs = [row["messages"] for row in tiny_tulu_rows(60, 2)]
    convs += [[{"role": "user", "content": "  Padded question?\n"}, {"role": "assistant", "content": "\n Padded answer. \n\n"}]]
    assert len({len(c) for c in convs}) > 1
    got = by_offsets(plain, convs)
    assert not [g for g in got if isinstance(g, Unverifiable)]
    assert got == [encode_chat(marked, c, None) for c in convs]


def test_the_prefix_method_also_counts_the_separator_after_the_turn():
    tok = load_tokenizer("tiny-llama")
    plain = with_template(stripped(tok.chat_template))
    for row in tiny_tulu_rows(10, 1):
        (ids, a), (ids_b, b) = encode_chat(tok, row["messages"], None), by_prefixes(plain, row["messages"])
        assert ids == ids_b
        ta, tb = {i for i, t in enumerate(a) if t != IGNORE_INDEX}, {i for i, t in enumerate(b) if t != IGNORE_INDEX}
        assert ta < tb and all(ids[i] == tok.convert_tokens_to_ids("Ċ") for i in tb - ta)


def test_qwen3s_template_breaks_the_prefix_property():
    """Its last assistant turn gets an empty think block, which goes once a user turn follows: the
    first turns rendered alone are not a prefix of the whole, so prefix masks would be shifted."""
    tok = qwen3_tokenizer()
    alone = tok.apply_chat_template(TWO_TURNS[:2], tokenize=False)
    whole = tok.apply_chat_template(TWO_TURNS, tokenize=False)
    assert "<think>\n\n</think>\n\nFirst answer." in alone and not whole.startswith(alone)
    with pytest.raises(Unverifiable, match="rewrites earlier turns"):
        by_prefixes(tok, TWO_TURNS)


def test_qwen3_trains_every_answer_with_its_end_of_turn_and_no_prompt_text():
    tok = qwen3_tokenizer()
    ids, labels = encode_chat(tok, TWO_TURNS, None)
    assert tok.decode(ids) == tok.apply_chat_template(TWO_TURNS, tokenize=False)
    target = [tok.convert_ids_to_tokens(t) for t in labels if t != IGNORE_INDEX]
    assert "".join(target).replace("Ġ", " ") == "First answer.<|im_end|>Second answer.<|im_end|>"
    # the last turn's inserted empty think block is prompt, and so is the newline after <|im_end|>
    assert "<think>" not in target and "Ċ" not in target


def test_qwen3_reasoning_trains_where_the_template_renders_it():
    """An assistant content with a <think> block: the last turn renders (and trains on) it, an earlier
    turn is rendered without it (Qwen3 drops the reasoning of turns before the last user turn)."""
    tok = qwen3_tokenizer()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."},
            {"role": "assistant", "content": "<think>\n2 plus 3 is 5.\n</think>\n\nIt is 5."},
            {"role": "user", "content": "And 4 and 4?"},
            {"role": "assistant", "content": "<think>\n4 plus 4\n\nis 8.\n\n</think>\n\n  It is 8."}]
    ids, labels = encode_chat(tok, chat, None)
    assert targets(tok, labels) == "It is 5.<|im_end|><think>\n4 plus 4\n\nis 8.\n</think>\n\n  It is 8.<|im_end|>"
    assert "2 plus 3" not in tok.decode(ids)


def test_a_template_no_method_can_verify_is_refused():
    """Branches on the content's last character (markers change it) and rewrites earlier turns."""
    tok = with_template("{% for m in messages %}{% if m['role'] == 'assistant' %}<|a|>{% if loop.last %}<think></think>"
                        "{% endif %}{% if m['content'][-1] == '.' %}{{ m['content'] }}{% else %}{{ m['content'] }}.{% endif %}"
                        "<|e|>{% else %}<|u|>{{ m['content'] }}<|e|>{% endif %}{% endfor %}"
                        "{% if add_generation_prompt %}<|a|>{% endif %}")
    with pytest.raises(ConfigError, match=r"^data.chat_template: cannot tell which tokens .*offsets: the template renders a "
                                          r"message differently.*prefixes: the template rewrites earlier turns"):
        encode_chat(tok, TWO_TURNS, None)


def test_where_offsets_cannot_vouch_prefixes_still_can():
    tok = with_template("{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'].endswith('?') %}{{ m['content'] }}"
                        "{% else %}{{ m['content'] }}!{% endif %}<|end|>\n{% endfor %}"
                        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert isinstance(by_offsets(tok, [TWO_TURNS])[0], Unverifiable)
    ids, labels = encode_chat(tok, TWO_TURNS, None)
    assert targets(tok, labels) == "First answer.!<|end|>\nSecond answer.!<|end|>\n"


def test_qwen3_two_turn_chats_through_show_data(tmp_path):
    """Done when: a Qwen3-template two-turn chat trains on both assistant answers and on neither user
    turn, as `lora-lab show-data --json` shows it (no model is built: the weights here are not ones)."""
    from conftest import LORA_LAB

    model = tmp_path / "qwen3-tokenizer"
    qwen3_tokenizer().save_pretrained(model)
    shutil.copy(ASSETS / "tiny-llama" / "config.json", model / "config.json")
    (model / "model.safetensors").write_bytes(b"not weights")
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."},
                          {"role": "user", "content": f"And {i} times {i}?"}, {"role": "assistant", "content": f"It is {i * i}."}]}
            for i in range(2, 7)]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([LORA_LAB, "show-data", "data=tulu3", f"data.path={data}", "data.eval_size=1", f"model.name={model}",
                        f"data.chat_template={QWEN3}", "--rows", "4", "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)
    assert len(shown) == 4
    for row in shown:
        i = int(row["text"].split("What is ")[1].split(" ")[0])
        assert row["targets"] == [f"It is {2 * i}.<|im_end|>", f"It is {i * i}.<|im_end|>"]
        assert f"What is {i} plus {i}?" in row["text"] and f"And {i} times {i}?" in row["text"]
        assert row["text"].count("<think>\n\n</think>") == 1 and row["trains"] and not row["truncated"]
