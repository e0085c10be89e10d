"""Chat templates and assistant masks: which tokens of a rendered conversation are SFT targets.

A conversation (a list of {role, content} messages) is rendered by the tokenizer's chat template
(`data.chat_template` replaces it) and tokenized as one sequence; the targets are the tokens of the
assistant turns. Three ways to find them, tried in this order, each rendering a conversation a
fixed number of times (the last excepted):

1. generation markers. A template with {% generation %} blocks (the shipped llama3 and chatml
   presets) marks its targets itself (transformers' `return_assistant_tokens_mask`): what the blocks
   enclose, there each assistant message's content and its end-of-turn token.
2. offsets. The conversation is rendered once as it is and once with a private-use character
   (U+E000...) before and after each message's content; where they land gives each content's place
   in the first rendering, and a fast tokenizer's offset mapping each token's characters. Targets:
   every token that overlaps an assistant message's content as the template rendered it (a template
   may rewrite it: Qwen3's drops the <think> block of an assistant turn followed by a later user
   turn, and then only the answer is rendered and trained), and the end-of-turn: the characters
   the template writes right after the content, up to the first whitespace, the end of the first
   special token (<|im_end|>, <|eot_id|>) and what it writes after every assistant turn of the
   conversation alike, whichever is shortest. Text the template inserts before the content (the
   turn's header, Qwen3's empty "<think>\\n\\n</think>\\n\\n" in the last turn) is prompt. Checked per
   conversation: both renderings agree once the markers are removed, every assistant content is
   found, messages keep their order, and no target overlaps another message's content.
3. prefixes (a slow tokenizer, or a template whose output changes once a marker is inserted). Each
   assistant turn is the difference between the conversation rendered up to it with the generation
   prompt and rendered up to its end, which also counts what the template writes after the content
   (the turn's separator); exact only for templates under which the first turns, rendered alone,
   are a prefix of the whole, which is checked. It renders each conversation once per message.

A conversation that none can vouch for stops the run with a ConfigError naming data.chat_template.

    python -m lora_lab.chat tests/fixtures/qwen3_chat_template.jinja   # a two-turn chat and its targets
"""

from __future__ import annotations

import bisect
import os
import re
import sys
from pathlib import Path
from typing import Any, Sequence

from lora_lab.config import CHAT_TEMPLATES, ConfigError

IGNORE_INDEX = -100
CHAT_TEMPLATE_DIR = Path(__file__).resolve().parent / "assets" / "chat_templates"
# Message k's content is wrapped in chr(_MARK + 2k) and chr(_MARK + 2k + 1): private-use code points,
# which no tokenizer's data and no template treats as text of its own.
_MARK, _LAST_MARK = 0xE000, 0xF8FF
_PRIVATE = re.compile("[\ue000-\uf8ff]")
_SPACE = re.compile(r"\s")
_FIX = "set data.chat_template=chatml, llama3 or a .jinja file with {% generation %} blocks"

Encoded = tuple[list[int], list[int]]  # token ids, labels (IGNORE_INDEX where not a target)


class Unverifiable(Exception):
    """A method that cannot vouch for its masks on one conversation; the message says why."""


def use_chat_template(tokenizer, data: Any) -> Any:
    """The tokenizer with the chat template data.chat_template names (a preset of
    lora_lab/assets/chat_templates/ or a .jinja file), or its own; a ConfigError naming
    data.chat_template when it has none (a base model's tokenizer), before any model loads."""
    if data.chat_template is not None:
        path = (CHAT_TEMPLATE_DIR / f"{data.chat_template}.jinja" if data.chat_template in CHAT_TEMPLATES
                else Path(data.chat_template).expanduser())
        tokenizer.chat_template = path.read_text()
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"data.chat_template=null: the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} "
                          f"has no chat template (a base model); set data.chat_template=llama3, chatml or a .jinja file")
    return tokenizer


def has_generation_blocks(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return bool(re.search(r"{%-?\s*generation\s*-?%}", template))


def encode_chat(tokenizer, messages: list[dict], max_len: int | None) -> Encoded:
    """Token ids and labels (IGNORE_INDEX outside the targets) of one conversation, cut to its
    first max_len tokens (None: not cut)."""
    ids, labels = encode_chats(tokenizer, [messages])[0]
    return ids[:max_len], labels[:max_len]


def encode_chats(tokenizer, conversations: Sequence[list[dict]], chunk: int = 256) -> list[Encoded]:
    """encode_chat (not cut) of many conversations, a chunk at a time: the tokenizer runs on a chunk
    at once (with generation markers: same ids and masks as one at a time, in 0.62x the time on
    tiny-tulu, experiments/bench_tokenize.py). ConfigError if a conversation's targets cannot be
    found by any method (module docstring)."""
    out: list[Encoded] = []
    for start in range(0, len(conversations), chunk):
        convs = [list(c) for c in conversations[start:start + chunk]]
        if has_generation_blocks(tokenizer):
            enc = tokenizer.apply_chat_template(convs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            out += [(list(ids), _labels(ids, mask)) for ids, mask in zip(enc["input_ids"], enc["assistant_masks"])]
            continue
        for conv, got in zip(convs, by_offsets(tokenizer, convs)):
            if isinstance(got, Unverifiable):
                try:
                    got = by_prefixes(tokenizer, conv)
                except Unverifiable as why:
                    raise ConfigError(f"data.chat_template: cannot tell which tokens of a conversation are the assistant's "
                                      f"(offsets: {got}; prefixes: {why}); {_FIX}") from None
            out.append(got)
    return out


def _labels(ids: Sequence[int], mask: Sequence[int]) -> list[int]:
    return [t if k else IGNORE_INDEX for t, k in zip(ids, mask)]


def _render(tokenizer, convs: list[list[dict]]) -> list[str]:
    return list(tokenizer.apply_chat_template(convs, tokenize=False))


def _special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {i for i, t in added.items() if getattr(t, "special", False)} | set(tokenizer.all_special_ids)


# ----------------------------------------------------------------------------- offsets


def _wrap(k: int, content: str) -> str:
    """Content with message k's markers around its text, outside its leading and trailing
    whitespace, so that a template that trims the content trims the same characters."""
    core = content.strip()
    lead = content[:len(content) - len(content.lstrip())]
    return f"{lead}{chr(_MARK + 2 * k)}{core}{chr(_MARK + 2 * k + 1)}{content[len(lead) + len(core):]}"


def by_offsets(tokenizer, convs: list[list[dict]]) -> list[Encoded | Unverifiable]:
    """Method 2 (module docstring) on conversations rendered and tokenized together; an
    Unverifiable in place of each conversation it cannot vouch for."""
    if not getattr(tokenizer, "is_fast", False):
        return [Unverifiable("the tokenizer has no offset mapping (not a fast tokenizer)")] * len(convs)
    texts = _render(tokenizer, convs)
    usable = [i for i, (c, t) in enumerate(zip(convs, texts))
              if 2 * len(c) <= _LAST_MARK - _MARK + 1 and not _PRIVATE.search(t)]
    failed = None
    try:
        marked = dict(zip(usable, _render(tokenizer, [[{**m, "content": _wrap(k, m["content"])} for k, m in enumerate(convs[i])]
                                                      for i in usable])))
    except Exception as exc:  # noqa: BLE001 - a template that chokes on the markers: the next method may do
        marked, failed = {}, Unverifiable(f"the template fails on marked content ({type(exc).__name__}: {exc})")
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    special = _special_ids(tokenizer)
    out: list[Encoded | Unverifiable] = []
    for i, conv in enumerate(convs):
        if i not in marked:
            out.append(failed or Unverifiable("the conversation holds private-use characters (U+E000-U+F8FF) "
                                              "or too many messages to mark"))
            continue
        ids = list(enc["input_ids"][i])
        try:
            spans = _spans(conv, texts[i], marked[i])
            out.append((ids, _labels(ids, _mask(conv, spans, texts[i], ids, enc["offset_mapping"][i], special))))
        except Unverifiable as exc:
            out.append(exc)
    return out


def _spans(conv: list[dict], text: str, marked: str) -> list[tuple[int, int, int] | None]:
    """Per message, (start, end, lower) of its content in `text`, the rendering without markers
    (lower: where the message before it ends), or None where the template does not render it."""
    if _PRIVATE.sub("", marked) != text:
        raise Unverifiable("the template renders a message differently once markers surround its content "
                           "(it looks at the content's first or last characters)")
    found = [(ord(m.group()) - _MARK, m.start() - j) for j, m in enumerate(_PRIVATE.finditer(marked))]
    keys = [k for k, _ in found]
    if keys != sorted(set(keys)) or (keys and keys[-1] >= 2 * len(conv)):
        raise Unverifiable("the template repeats or reorders messages")
    pos, spans, lower = dict(found), [], 0
    for i, m in enumerate(conv):
        start, end = pos.get(2 * i), pos.get(2 * i + 1)
        content = m["content"]
        lead = content[:len(content) - len(content.lstrip())]
        trail = content[len(content.rstrip()):]
        if start is None and end is not None:  # the start went with a part of the content the template dropped
            start = _match_back(text, lower, end, content)  # (Qwen3: the <think> block of an earlier turn)
        if start is None or end is None:
            if m["role"] == "assistant":
                raise Unverifiable(f"message {i} (assistant): its content is not in the rendering")
            spans.append(None)  # a message the template leaves out (or rewrites whole) holds no target
            continue
        # The content's own leading and trailing whitespace belong to it where the template keeps them.
        # One that trims (llama3's) may write whitespace of its own just there: a trailing one it did not
        # keep tells that, and then the whitespace before the content is the template's.
        kept_trail = not trail or text[end:end + len(trail)] == trail
        if lead and kept_trail and start >= len(lead) and text[start - len(lead):start] == lead:
            start -= len(lead)
        if trail and kept_trail:
            end += len(trail)
        spans.append((start, end, lower))
        lower = end
    return spans


def _match_back(text: str, lo: int, end: int, content: str) -> int | None:
    """Where in text[lo:end] the longest tail of `content` that text[:end] ends with begins,
    whitespace ignored (a template may strip a block's newlines); None if no character matches."""
    core = content.strip()
    if text[lo:end].endswith(core):
        return end - len(core)
    i, j, start = end, len(core), None
    while True:
        while j and core[j - 1].isspace():
            j -= 1
        while i > lo and text[i - 1].isspace():
            i -= 1
        if not j or i == lo or text[i - 1] != core[j - 1]:
            return start
        i, j, start = i - 1, j - 1, i - 1


def _mask(conv: list[dict], spans: list, text: str, ids: list[int], offsets: Sequence[Sequence[int]],
          special: set[int]) -> list[int]:
    starts = [s for s, _ in offsets]
    ends = [max(e, s + 1) for s, e in offsets]  # an empty span (a trimmed space) counts as its first character
    assistant = [(i, sp) for i, (m, sp) in enumerate(zip(conv, spans)) if m["role"] == "assistant"]
    # The end-of-turn: what follows each assistant content up to whitespace, cut to what all share.
    after = []
    for i, (start, end, _) in assistant:
        nxt = next((sp[0] for sp in spans[i + 1:] if sp is not None), len(text))
        tail = text[end:nxt]
        cut = _SPACE.search(tail)
        after.append(tail[:cut.start()] if cut else tail)
    eot = len(os.path.commonprefix(after)) if after else 0
    mask = [0] * len(ids)
    for i, (start, end, _) in assistant:
        k = bisect.bisect_right(ends, start)  # the first token that ends after the content starts
        last = k - 1
        while k < len(ids) and starts[k] < end:
            mask[k], last = 1, k
            k += 1
        k = last + 1
        while k < len(ids) and starts[k] < end + eot:
            mask[k] = 1
            if ids[k] in special:
                break
            k += 1
    for (m, sp) in zip(conv, spans):
        if m["role"] != "assistant" and sp is not None:
            a, b = sp[0], sp[1]
            k = bisect.bisect_right(ends, a)
            while k < len(ids) and starts[k] < b:
                if mask[k] and b > a:
                    raise Unverifiable(f"a target token overlaps the content of a {m['role']} message")
                k += 1
    return mask


# ----------------------------------------------------------------------------- prefixes


def by_prefixes(tokenizer, messages: list[dict]) -> Encoded:
    """Method 3 (module docstring); Unverifiable if the template rewrites earlier turns."""

    def render(msgs, gen=False):
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=gen)["input_ids"])

    ids: list[int] = []
    mask: list[int] = []
    for i, m in enumerate(messages):
        full = render(messages[: i + 1])
        if full[: len(ids)] != ids:
            raise Unverifiable(f"the template rewrites earlier turns once message {i} ({m['role']}) follows "
                               f"(the first turns rendered alone are not a prefix of the whole)")
        if m["role"] == "assistant":
            # The turn's header (e.g. "<|start_header_id|>assistant...") is prompt, not target.
            head = render(messages[:i], gen=True) if i else []
            if full[: len(head)] != head or head[: len(ids)] != ids:
                head = ids
            mask += [0] * (len(head) - len(ids)) + [1] * (len(full) - len(head))
        else:
            mask += [0] * (len(full) - len(ids))
        ids = full
    return ids, _labels(ids, mask)


if __name__ == "__main__":
    from lora_lab.models import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    if len(sys.argv) > 1:
        tok.chat_template = Path(sys.argv[1]).read_text()
    chat = [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "First answer."},
            {"role": "user", "content": "Second question?"}, {"role": "assistant", "content": "Second answer."}]
    ids, labels = encode_chat(tok, chat, None)
    print(repr(tok.decode(ids)))
    print("targets:", repr(tok.decode([t for t in labels if t != IGNORE_INDEX])))
