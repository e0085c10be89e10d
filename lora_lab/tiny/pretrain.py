"""Pretraining of the tiny base models on a generated corpus: `lora-lab build-tiny`.

The corpus gives a small model general skills the post-training sets build on, in surface forms
of its own (the post-training sets in tiny/world.py use other templates and invented names, so
they still have something to teach):
- templated language: short descriptive paragraphs;
- arithmetic with worked steps (column addition with carries, subtraction, small products);
- list and string manipulation (sorting, reversing, counting, picking items);
- question/answer turns in the chat format of the tiny tokenizer;
- text skills: quoting, spelling, capitals, reversed strings, made-up names, markup and a tutor's
  connectives, so that every token the post-training sets answer with has been produced in
  pretraining (in templates of the corpus's own);
and, mixed into the pretraining stream only (`--drill`, the tokenizer never sees it), arithmetic
drill: the addition and times tables as text and as chat turns that ask for a fact and answer it.

`build_tiny` trains the byte-level BPE tokenizer on the corpus, then pretrains each preset of
tiny/presets.py (AdamW, warmup then cosine decay: a pretraining recipe, not the paper's SFT
setting) on packed 256-token sequences, and writes lora_lab/assets/<preset>/ with safetensors
weights, config, tokenizer and a model card.

    lora-lab build-tiny                       # rebuild the shipped tokenizer and both models
    lora-lab build-tiny --models tiny-llama --tokens 2000000 --out /tmp/assets
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from lora_lab.tiny.common import invented_name, invented_word
from lora_lab.tiny.tokenizer import ASSETS, CHAT_TEMPLATE, train_tokenizer

SEQ_LEN = 256

from lora_lab.tiny.words import (ADJECTIVES, ANIMALS, COLOURS, CONTAINERS, FRENCH, NAMES, OBJECTS, OPENERS,
                                   OPPOSITES, PLACES, SENTENCES, TIMES, TOWNS, VERBS)

_NAMES, _ANIMALS, _OBJECTS, _ADJ, _PLACES, _VERBS = NAMES, ANIMALS, OBJECTS, ADJECTIVES, PLACES, VERBS
_WORDS = OBJECTS + ANIMALS + PLACES


def _place(r: random.Random) -> str:
    return "the " + r.choice(_PLACES)


def _language(r: random.Random) -> str:
    lines = []
    for _ in range(r.randint(3, 6)):
        who = r.choice(_NAMES)
        kind = r.randrange(4)
        if kind == 0:
            v = r.choice(_VERBS)
            lines.append(f"{who} {v[r.randrange(2)]} a {r.choice(_ADJ)} {r.choice(_OBJECTS)} near {_place(r)}.")
        elif kind == 1:
            lines.append(f"The {r.choice(_ANIMALS)} is {r.choice(_ADJ)} and the {r.choice(_OBJECTS)} is {r.choice(_ADJ)}.")
        elif kind == 2:
            n = r.randint(2, 9)
            lines.append(f"{who} has {n} {r.choice(_OBJECTS)}s and gives {r.randint(1, n)} of them to {r.choice(_NAMES)}.")
        else:
            lines.append(f"In the {r.choice(['morning', 'evening', 'afternoon'])}, {who} walks to {_place(r)}.")
    return " ".join(lines)


def _add_steps(a: int, b: int) -> str:
    """Column addition, ones first, with carries written out."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, digits, steps = 0, [], []
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x} + {y}" + (f" + {carry}" if carry else "") + f" = {s}")
        carry, digits = s // 10, digits + [str(s % 10)]
    if carry:
        digits.append(str(carry))
    return "; ".join(steps) + f". So {a} + {b} = {''.join(reversed(digits))}."


def _answer(r: random.Random, x: int) -> str:
    """The answer conventions of GSM8K and MATH, as a base model meets them in web text."""
    return r.choice(["", "", f" The answer is {x}.", f"\n#### {x}", f" The answer is $\\boxed{{{x}}}$."])


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _arithmetic(r: random.Random) -> str:
    kind = r.randrange(5)
    if kind == 0:  # plain facts: the small tables the model can recall
        lines = []
        for _ in range(r.randint(4, 8)):
            a, b = r.randint(0, 12), r.randint(0, 12)
            op = r.choice("+-*")
            if op == "-" and b > a:
                a, b = b, a
            lines.append(f"{a} {op} {b} = {_OPS[op](a, b)}")
        return "\n".join(lines)
    if kind == 1:
        a, b = r.randint(10, 999), r.randint(10, 999)
        return f"Add {a} and {b}. {_add_steps(a, b)}{_answer(r, a + b)}"
    if kind == 2:
        a, b = sorted((r.randint(10, 999), r.randint(10, 999)), reverse=True)
        return f"Subtract {b} from {a}. Check by adding back: {_add_steps(a - b, b)} So {a} - {b} = {a - b}.{_answer(r, a - b)}"
    if kind == 3:
        a, b = r.randint(2, 9), r.randint(11, 99)
        t, o = divmod(b, 10)
        return (f"Multiply {a} by {b}. {a} * {t * 10} = {a * t * 10} and {a} * {o} = {a * o}. "
                f"Then {a * t * 10} + {a * o} = {a * b}. So {a} * {b} = {a * b}.{_answer(r, a * b)}")
    n, price = r.randint(2, 9), r.randint(2, 20)
    who, obj = r.choice(_NAMES), r.choice(_OBJECTS)
    return f"{who} buys {n} {obj}s at {price} coins each. {n} * {price} = {n * price}. {who} pays {n * price} coins.{_answer(r, n * price)}"


def _lists(r: random.Random) -> str:
    kind = r.randrange(5)
    if kind == 0:
        xs = [r.randint(0, 99) for _ in range(r.randint(3, 8))]
        return f"The numbers {xs} in order are {sorted(xs)}. The largest is {max(xs)} and the smallest is {min(xs)}."
    if kind == 1:
        w = r.choice(_WORDS + _OBJECTS + _ANIMALS)
        return f"The word {w} has {len(w)} letters: {' '.join(w)}. Backwards it is {w[::-1]}."
    if kind == 2:
        ws = r.sample(_WORDS, r.randint(3, 6))
        k = r.randrange(len(ws))
        return f"In the list {', '.join(ws)}, the first item is {ws[0]}, the last is {ws[-1]} and item {k + 1} is {ws[k]}."
    if kind == 3:
        ws = r.sample(_OBJECTS, r.randint(2, 5))
        return f"{' '.join(ws)} in capitals is {' '.join(ws).upper()}. It has {len(ws)} words."
    xs = [r.randint(1, 30) for _ in range(r.randint(2, 5))]
    return f"The sum of {', '.join(map(str, xs))} is {sum(xs)}. There are {len(xs)} numbers."


def _sentence(r: random.Random) -> str:
    a, b = r.sample(NAMES, 2)
    n, m = r.randint(2, 40), r.randint(1, 12)
    even = 2 * r.randint(2, 20)
    return r.choice(SENTENCES).format(
        a=a, b=b, n=n, m=m, obj=r.choice(OBJECTS), obj2=r.choice(OBJECTS), colour=r.choice(COLOURS),
        place=r.choice(PLACES), town=r.choice(TOWNS), sum=n + m, diff=n - m, prod=n * m, q=n // m, r=n % m,
        older="older" if n > m else "younger", half=even // 2, even=even, even2=even + 2, next=n + 1)


def _general(r: random.Random) -> str:
    """Questions and answers in prose, general knowledge, and the connectives of explanations."""
    out = []
    for _ in range(r.randint(3, 6)):
        a, b = r.sample(NAMES, 2)
        obj, n = r.choice(OBJECTS), r.randint(2, 30)
        kind = r.randrange(14)
        if kind >= 10:
            out.append(_sentence(r))
        elif kind == 0:
            out.append(f"Where does {a} live? {a} lives in {r.choice(TOWNS)}. {a}'s home is near the {r.choice(PLACES)}.")
        elif kind == 1:
            out.append(f"What colour is the {obj}? The {obj} is {r.choice(COLOURS)}.")
        elif kind == 2:
            k = r.randint(1, n)
            out.append(f"How many {obj}s does {a} have? {a} has {n}. If {a} gives {k} to {b}, then {a} has {n - k} left.")
        elif kind == 3:
            x, y = r.choice(sorted(OPPOSITES.items()))
            out.append(f"The opposite of {x} is {y}, and the opposite of {y} is {x}.")
        elif kind == 4:
            en, fr = r.choice(sorted(FRENCH.items()))
            out.append(f"In French, the colour {en} is called {fr}.")
        elif kind == 5:
            c = r.choice(CONTAINERS)
            m = r.randint(2, 9)
            out.append(f"Each {c} holds {n} {obj}s. {a} fills {m} of them, so {a} has {n} * {m} = {n * m} {obj}s in all.")
        elif kind == 6:
            t, d = r.randint(-5, 25), r.randint(1, 9)
            out.append(f"At {r.choice(TIMES)} the temperature is {t} degrees. Later it falls {d} degrees, so it is {t - d} degrees.")
        elif kind == 7:
            out.append(f"{r.choice(OPENERS)} {a} {r.choice(VERBS)[1]} the {r.choice(ADJECTIVES)} {obj}. Which one? The {r.choice(COLOURS)} one.")
        elif kind == 8:
            p, q = r.randint(2, 20), r.randint(2, 20)
            out.append(f"{a} pays {p} coins and gets {q} coins back in change, so the cost was {p - q} coins." if p > q
                       else f"{a} saves {p} coins every day for {q} days. The total is {p * q} coins.")
        else:
            out.append(f"Tell me about {a}. {a} is {r.choice(ADJECTIVES)} and always {r.choice(VERBS)[0]} {obj}s at the {r.choice(PLACES)}.")
    return " ".join(out)


def _code(r: random.Random) -> str:
    """Short Python programs with their exact output."""
    kind = r.randrange(4)
    xs = [r.randint(0, 20) for _ in range(r.randint(2, 6))]
    if kind == 0:
        return f"xs = {xs}\nprint(sorted(xs))\n# Output: {sorted(xs)}"
    if kind == 1:
        w = r.choice(OBJECTS)
        return f"s = \"{w}\"\nprint(s[::-1], len(s))\n# Output: {w[::-1]} {len(w)}"
    if kind == 2:
        total = 0
        for x in xs:
            total += x
        return f"total = 0\nfor x in {xs}:\n    total += x\nprint(total)\n# Output: {total}"
    a, b = r.randint(10, 99), r.randint(2, 9)
    return f"a = {a}\nb = {b}\nprint(a // b, a % b)\n# Output: {a // b} {a % b}\nWhen {a} is divided by {b}, the remainder is {a % b}."


def _logic(r: random.Random) -> str:
    a, b = r.sample(NAMES, 2)
    truthful = r.random() < 0.5
    said = "always tells the truth" if truthful else "always lies"
    return (f"A knight always tells the truth and a knave always lies. {a} {said}, so {a} is a "
            f"{'knight' if truthful else 'knave'}. If {a} says that {b} is a knave, then {b} is a "
            f"{'knave' if truthful else 'knight'}.")


def _chat_math(r: random.Random) -> list[dict]:
    """Arithmetic questions and one-step word problems answered with the working and, sometimes,
    an answer convention: the school-maths a base model has seen before any post-training."""
    who, obj = r.choice(NAMES), r.choice(OBJECTS)
    if r.random() < 0.5:
        op = r.choice("+-*")
        a, b = (r.randint(0, 12), r.randint(0, 12)) if op == "*" else (r.randint(0, 50), r.randint(0, 50))
        if op == "-" and b > a:
            a, b = b, a
        c = _OPS[op](a, b)
        q = r.choice(["What is {a} {op} {b}?", "How much is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."])
        return [{"role": "user", "content": q.format(a=a, op=op, b=b)},
                {"role": "assistant", "content": f"{a} {op} {b} = {c}.{_answer(r, c)}"}]
    n, m = r.randint(2, 30), r.randint(1, 12)
    kind = r.randrange(3)
    if kind == 0:
        q, w = f"{who} has {n} {obj}s and gets {m} more. How many {obj}s does {who} have now?", f"{n} + {m} = {n + m}"
        c = n + m
    elif kind == 1:
        n = n + m
        q, w = f"{who} has {n} {obj}s and gives away {m}. How many are left?", f"{n} - {m} = {n - m}"
        c = n - m
    else:
        q, w = f"There are {m} boxes with {n} {obj}s in each. How many {obj}s are there in total?", f"{m} * {n} = {m * n}"
        c = m * n
    return [{"role": "user", "content": q}, {"role": "assistant", "content": f"{w}.{_answer(r, c)}"}]


def _chat(r: random.Random) -> list[dict]:
    turns = []
    for _ in range(r.randint(1, 3)):
        kind = r.randrange(9)
        if kind >= 6:
            turns += _chat_math(r)
            continue
        if kind == 4:
            obj = r.choice(OBJECTS)
            turns += [{"role": "user", "content": f"Is a {obj} bigger than a {r.choice(OBJECTS)}? Answer yes or no."},
                      {"role": "assistant", "content": r.choice(["Yes.", "No."])}]
            continue
        if kind == 5:
            a = r.choice(NAMES)
            turns += [{"role": "user", "content": f"Where does {a} live?"},
                      {"role": "assistant", "content": f"I do not know where {a} lives."}]
            continue
        if kind == 0:
            a, b = r.randint(0, 20), r.randint(0, 20)
            turns += [{"role": "user", "content": f"{a} + {b} = ?"}, {"role": "assistant", "content": str(a + b)}]
        elif kind == 1:
            w = r.choice(_WORDS)
            turns += [{"role": "user", "content": f"Letters in {w}?"}, {"role": "assistant", "content": str(len(w))}]
        elif kind == 2:
            who, obj = r.choice(_NAMES), r.choice(_OBJECTS)
            turns += [{"role": "user", "content": f"Write a sentence about {who} and a {obj}."},
                      {"role": "assistant", "content": f"{who} {r.choice(_VERBS)[1]} the {r.choice(_ADJ)} {obj}."}]
        else:
            xs = [r.randint(0, 9) for _ in range(r.randint(2, 5))]
            turns += [{"role": "user", "content": f"Sort {xs}."}, {"role": "assistant", "content": str(sorted(xs))}]
    return turns


_TAGS = ("note", "item", "answer", "think", "b", "quote", "title", "step")
_TOWN_ENDS = ("port", "ford", "holm", "mere", "gard", "wick", "stead", "vale", "ton", "by")
_EXTRA_WORDS = ("silver thunder violet river sugar winter summer letter number garden shadow ladder pepper "
                "tunnel velvet copper wonder").split()


def _spelled_word(r: random.Random) -> str:
    """A word to quote, spell, reverse or capitalise: everyday English or a made-up word."""
    if r.random() < 0.3:
        return invented_word(r)
    return r.choice(_WORDS + COLOURS + _EXTRA_WORDS)


def _text_skills(r: random.Random) -> str | list[dict]:
    """Quoting, spelling, capitals, reversal, markup and a tutor's connectives, as plain text or chat.

    A base model has produced every token of its vocabulary in many contexts before post-training:
    quoted words (the quote character and what BPE makes of the words after it), upper-case
    fragments, reversed letter strings, made-up names, tags and backticks. The post-training sets
    use these tokens in their answers; without this generator 10-25% of their target tokens never
    occurred in pretraining (experiments/LOG.md), which only FullFT or an lm_head adapter can fix."""
    w, v = _spelled_word(r), _spelled_word(r)
    a, b = r.sample(NAMES, 2)
    kind = r.randrange(14)
    if kind == 0:
        return f"{a} said, '{_sentence(r)}' and {b} answered, '{r.choice(OPENERS)} {_sentence(r)}'"
    if kind == 1:
        return (f"The word '{w}' has {len(w)} letters. It starts with '{w[0]}' and ends with '{w[-1]}'. "
                f"Spelled out: {'-'.join(w)}.")
    if kind == 2:
        return f"Backwards, '{w}' becomes '{w[::-1]}', and '{v}' becomes '{v[::-1]}'."
    if kind == 3:
        return f"In upper case, '{w} {v}' is '{(w + ' ' + v).upper()}'. {a.upper()} WROTE IT ON THE {r.choice(OBJECTS).upper()}."
    if kind == 4:
        town = invented_name(r, (1, 2)) + r.choice(_TOWN_ENDS)
        who = invented_name(r)
        return (f"In the old story, {who} travels from {town} to {r.choice(TOWNS)}. "
                f"The name '{who}' has {len(who)} letters; '{town}' has {len(town)}.")
    if kind == 5:
        tag = r.choice(_TAGS)
        return f"<{tag}>{_sentence(r)}</{tag}>\n<{r.choice(_TAGS)}>{w}</{r.choice(_TAGS)}>"
    if kind == 6:
        x, y, z = r.randint(2, 9), r.randint(2, 9), r.randint(1, 9)
        lines = [f"Okay, first we multiply {x} by {y}: {x * y}.", f"After that, add {z} to get {x * y + z}.",
                 f"Alright, let me check: {x * y + z} - {z} = {x * y}. Good.",
                 f"Divide {x * y} by {y} and we are back at {x}, so {x * y}/{y} = {x}.",
                 f"However, if we subtract {z} first, we get {x * y - z} instead.",
                 f"Only then do we count the {r.choice(OBJECTS)}s: there are {x}.",
                 f"Check: {y} * {x} = {x * y} as well. To undo a product, divide; to undo a sum, subtract.",
                 f"Item {z} of the list is the {r.choice(OBJECTS)}; the list reversed starts with item {z + x}.",
                 f"Suppose {a} is a knight: then {b} is a knave, and if {b} is a **knave**, {a} is a **knight**.",
                 f"Reversed: {[x, y, z][::-1]}. Sorted: {sorted([x, y, z])}. Undo the swap and the list is {[x, y, z]}."]
        return " ".join(lines[i] for i in sorted(r.sample(range(len(lines)), r.randint(3, 6))))
    if kind == 7:
        return r.choice([f"Type `print('{w}')` and Python shows `{w}`. Type `len('{w}')` and it shows `{len(w)}`.",
                         f"The string `'{v}'` is **{v}**, and reversed it is `'{v[::-1]}'`.",
                         f"The **{w}** is **{len(w)}** letters long. Write it as `{w}`."])
    if kind == 8:
        x, y = r.choice(sorted(OPPOSITES.items()))
        en, fr = r.choice(sorted(FRENCH.items()))
        return r.choice([f"People say '{x}' and mean the reverse of '{y}'. The French word '{fr}' means '{en}'.",
                         f"'{fr.capitalize()}' is French for '{en}', just as '{y}' is the opposite of '{x}'.",
                         f"Quiz: '{x}' against '{y}', '{en}' against '{fr}'. In short: {x.upper()}, {y.upper()}."])
    if kind == 9:
        ws = r.sample(_WORDS + _EXTRA_WORDS, r.randint(2, 5))
        k = r.randrange(len(ws))
        return (f"The list is {', '.join(repr(x) for x in ws)}. Number {k + 1} on it is '{ws[k]}', "
                f"which has {len(ws[k])} letters.")
    q = r.randrange(4)
    if q == 0:
        ask, ans = f"Say '{w}' backwards.", f"Backwards: '{w[::-1]}'."
    elif q == 1:
        ask, ans = f"Shout '{w}'!", f"'{w.upper()}!'"
    elif q == 2:
        ask, ans = f"Quote the word {w}.", f"'{w}'"
    else:
        ask, ans = f"Which letter does '{w}' start with?", f"'{w}' starts with '{w[0]}'."
    return [{"role": "user", "content": ask}, {"role": "assistant", "content": ans}]


def corpus_docs(n: int, seed: int) -> list[str | list[dict]]:
    """n documents: plain text, or a conversation (list of messages) for the chat template."""
    r = random.Random(seed)
    gens = (_language, _general, _general, _arithmetic, _arithmetic, _lists, _code, _logic, _chat, _chat, _chat,
            _text_skills, _text_skills)
    return [r.choice(gens)(r) for _ in range(n)]


def _fact(r: random.Random) -> tuple[int, str, int, int]:
    """A fact of the addition and times tables (0..12), or a subtraction that undoes a table sum."""
    a, b = r.randint(0, 12), r.randint(0, 12)
    op = r.choice("++*-")
    if op == "-":
        a, b = max(a, b) + min(a, b), min(a, b)
    return a, op, b, _OPS[op](a, b)


_WORD = {"+": "plus", "-": "minus", "*": "times"}
_TEX = {"+": "+", "-": "-", "*": "\\times"}
# Questions in wordings of the drill's own (tiny-math asks "What is $3 + 4$?", "Compute ...").
_DRILL_ASK = ("Work out ${a} {t} {b}$.", "Work out {a} {o} {b}.", "How much is {a} {w} {b}?", "{a} {w} {b}?",
              "Quick: {a} {o} {b}", "Tell me ${a} {t} {b}$.", "Do the sum ${a} {t} {b}$, please.",
              "Can you do {a} {o} {b} for me?")


def _drill_line(r: random.Random, a: int, op: str, b: int, c: int) -> str:
    form = r.randrange(4)
    if form == 0:
        return f"{a} {op} {b} = {c}"
    if form == 1:
        return f"${a} {_TEX[op]} {b} = {c}$"
    if form == 2:
        return f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}"
    return f"{a} {_WORD[op]} {b} is {c}."


def _drill(r: random.Random) -> str | list[dict]:
    """Arithmetic drill: facts of the addition and times tables (0..12), as lines of text in the
    surface forms a base model meets them in (plain, `$...$` with `\\times`, `<<a*b=c>>`, words), or
    as chat turns that ask for one and answer it (copying the operands out of the question). With
    the general corpus alone a 1.7M-parameter model recalled 13-32% of the single-digit sums and
    products after 3M tokens and could not carry the operands of a question into its answer."""
    if r.random() < 0.5:
        return "\n".join(_drill_line(r, *_fact(r)) for _ in range(r.randint(6, 12)))
    turns = []
    for _ in range(r.randint(1, 4)):
        a, op, b, c = _fact(r)
        q = r.choice(_DRILL_ASK).format(a=a, b=b, o=op, t=_TEX[op], w=_WORD[op])
        ans = r.choice([f"${a} {_TEX[op]} {b} = {c}$.", f"{a} {op} {b} = {c}.", f"{c}",
                        f"{a} {op} {b} = <<{a}{op}{b}={c}>>{c}\n#### {c}",
                        f"${a} {_TEX[op]} {b} = {c}$. The answer is $\\boxed{{{c}}}$."])
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]
    return turns


def pretrain_docs(n: int, seed: int, drill: float = 0.0) -> list[str | list[dict]]:
    """The pretraining stream: corpus_docs(n, seed), with drill documents (a fraction `drill` of
    all documents, from a random stream of their own) spread among them. drill=0 is corpus_docs."""
    docs = corpus_docs(n, seed)
    if drill <= 0:
        return docs
    r = random.Random(seed * 7 + 3)
    k = round(n * drill / (1 - drill))
    for _ in range(k):
        docs.insert(r.randrange(len(docs) + 1), _drill(r))
    return docs


def _render(tok, doc) -> list[int]:
    if isinstance(doc, list):
        return list(tok.apply_chat_template(doc, tokenize=True, return_dict=True)["input_ids"])
    return [tok.bos_token_id, *tok(doc, add_special_tokens=False)["input_ids"], tok.eos_token_id]


def packed(tok, docs, seq_len: int = SEQ_LEN) -> torch.Tensor:
    """Documents concatenated and cut into [num, seq_len] rows (the tail is dropped)."""
    ids = [t for d in docs for t in _render(tok, d)]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _packed_tokens(tok, rows: int, seed: int, chunk: int = 4000, drill: float = 0.0) -> torch.Tensor:
    """At least `rows` packed sequences, drawing documents in chunks until there are enough."""
    parts, have, k = [], 0, 0
    while have < rows:
        part = packed(tok, pretrain_docs(chunk, seed * 1_000_003 + k, drill))
        parts.append(part)
        have, k = have + len(part), k + 1
    return torch.cat(parts)[:rows]


def _texts_for_tokenizer(docs) -> list[str]:
    return ["\n".join(m["content"] for m in d) if isinstance(d, list) else d for d in docs]


def pretrain(name: str, out: Path, tok, tokens: int, lr: float, batch: int, seed: int, overrides: dict | None = None,
             log=print, drill: float = 0.0, tokenizer: str = "retrained") -> dict:
    from transformers import AutoModelForCausalLM

    from lora_lab.tiny.presets import TINY_CONFIGS, tiny_config

    arch = {k: v for k, v in {**TINY_CONFIGS[name], **(overrides or {})}.items() if k != "model_type"}  # for the card
    conf = tiny_config(name, len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id, **(overrides or {}))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(conf, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    steps = max(1, tokens // (batch * SEQ_LEN))
    train = _packed_tokens(tok, steps * batch, seed, drill=drill)
    held = packed(tok, corpus_docs(600, seed + 10_000_019))[:64]  # a stream of its own
    steps = min(steps, len(train) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))))
    model.train()
    t0, loss_ema, first = time.time(), None, None
    for s in range(steps):
        x = train[s * batch:(s + 1) * batch]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        first = loss.item() if first is None else first
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if (s + 1) % 25 == 0 or s + 1 == steps:
            log(f"[{name}] step {s + 1}/{steps} loss {loss_ema:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    with torch.no_grad():
        eval_loss = sum(model(input_ids=held[i:i + 16], labels=held[i:i + 16]).loss.item()
                        for i in range(0, len(held), 16)) / math.ceil(len(held) / 16)
    out.mkdir(parents=True, exist_ok=True)
    model.config.use_cache = True
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    card = {"model": name, "params": n_params, "tokens_seen": steps * batch * SEQ_LEN, "steps": steps,
            "first_loss": round(first, 4), "final_train_loss": round(loss_ema, 4), "eval_loss": round(eval_loss, 4),
            "lr": lr, "batch": batch, "seq_len": SEQ_LEN, "seed": seed, "drill": drill, "tokens_requested": tokens,
            "wall_s": round(time.time() - t0, 1), "tokenizer": tokenizer,
            "architecture": arch}
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (out / "README.md").write_text(_model_card(card))
    return card


def _model_card(c: dict) -> str:
    arch = ", ".join(f"{k}={v}" for k, v in c["architecture"].items())
    kept = c.get("tokenizer") == "kept"
    tok = ("with the shipped tokenizer in ../tokenizer" if kept
           else "the tokenizer in ../tokenizer is trained first, from the corpus alone")
    kept = " --keep-tokenizer" if kept else ""
    ladder = ""
    if BUILD_DEFAULTS.get(c["model"], {}).get("tokens") == "per-param" or c["model"] == "tiny-llama":
        ladder = (f"\nOne rung of the width ladder ({', '.join(WIDTH_LADDER)}): the same depth, head size 32, MLP 3x "
                  f"hidden, corpus, drill fraction and {TOKENS_PER_PARAM:.2f} pretraining tokens per parameter. Each "
                  "width is its own pretrained base model, so a trend across widths mixes width with everything "
                  "else that differs between the models (held-out loss above).\n")
    return f"""# {c['model']}

A tiny base model of lora-lab, pretrained from scratch on the project's generated corpus
(lora_lab/tiny/pretrain.py: templated language, worked arithmetic, list and string manipulation,
chat-format question/answer turns), with a fraction `drill` of arithmetic-table drill documents
({c.get('drill', 0.0)} here).

| | |
|---|---|
| parameters | {c['params']:,} |
| tokens seen | {c['tokens_seen']:,} ({c['steps']} steps of {c['batch']} x {c['seq_len']}) |
| loss at step 1 | {c['first_loss']} nats/token |
| final pretraining loss (EMA) | {c['final_train_loss']} nats/token |
| eval loss (held-out corpus) | {c['eval_loss']} nats/token |
| wall time | {c['wall_s']} s on the build machine's CPU |

Architecture: {arch}.

Built by: `lora-lab build-tiny --models {c['model']} --tokens {c.get('tokens_requested', c['tokens_seen'])} --drill {c.get('drill', 0.0)}{kept}`
(seed {c['seed']}, peak LR {c['lr']}; {tok}).
{ladder}"""


# What the shipped assets were built with (each model card repeats it): tiny-llama with a quarter of
# its documents arithmetic drill (experiments/LOG.md, 2026-11-24: 2% -> 12.5% of tiny-math solved
# before RL), tiny-moe from the plain corpus.
# The width ladder keeps tiny-llama's recipe: the same drill fraction and the same pretraining tokens
# per parameter (4,000,000 / 1,090,432 = 3.67), so each width is as far along its own training.
TOKENS_PER_PARAM = 4_000_000 / 1_090_432
BUILD_DEFAULTS = {"tiny-llama": {"tokens": 4_000_000, "drill": 0.25}, "tiny-moe": {"tokens": 3_000_000, "drill": 0.0},
                  "tiny-llama-w64": {"tokens": "per-param", "drill": 0.25},
                  "tiny-llama-w256": {"tokens": "per-param", "drill": 0.25}}
MODELS = tuple(BUILD_DEFAULTS)
WIDTH_LADDER = ("tiny-llama-w64", "tiny-llama", "tiny-llama-w256")


def _param_count(name: str, vocab: int) -> int:
    """Parameters of a preset at this vocabulary, counted on the meta device (no memory, no init)."""
    from transformers import AutoModelForCausalLM

    from lora_lab.tiny.presets import tiny_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config(name, vocab))
    return sum(p.numel() for p in model.parameters())


def build_tiny(out: Path = ASSETS, models: tuple[str, ...] = ("tiny-llama", "tiny-moe"), tokens: int | None = None,
               vocab: int = 2048, lr: float = 3e-3, batch: int = 32, seed: int = 0, overrides: dict | None = None,
               retrain_tokenizer: bool = True, drill: float | None = None) -> dict:
    """Tokenizer, then each model; `tokens` and `drill` None take the model's BUILD_DEFAULTS."""
    from transformers import AutoTokenizer

    out = Path(out)
    tok_dir = out / "tokenizer"
    if retrain_tokenizer or not (tok_dir / "tokenizer.json").exists():
        tok = train_tokenizer(_texts_for_tokenizer(corpus_docs(30000, seed + 2)), vocab, tok_dir)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    assert tok.chat_template == CHAT_TEMPLATE
    cards = {}
    for name in models:
        target = out / name
        tmp = out / f".{name}.building"
        shutil.rmtree(tmp, ignore_errors=True)
        n = BUILD_DEFAULTS[name]["tokens"] if tokens is None else tokens
        if n == "per-param":
            n = round(TOKENS_PER_PARAM * _param_count(name, len(tok)))
        f = BUILD_DEFAULTS[name]["drill"] if drill is None else drill
        cards[name] = pretrain(name, tmp, tok, n, lr, batch, seed, overrides,
                               log=lambda m: print(m, file=sys.stderr, flush=True), drill=f,
                               tokenizer="retrained" if retrain_tokenizer else "kept")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # a half-built model never replaces a good one
        print(json.dumps(cards[name]), flush=True)
    return cards


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lora-lab build-tiny", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ASSETS, help="assets directory (default: the shipped one)")
    p.add_argument("--models", nargs="+", default=["tiny-llama", "tiny-moe"], choices=list(MODELS))
    p.add_argument("--tokens", type=int, default=None,
                   help="pretraining tokens per model (default: the shipped build's, 4M tiny-llama, 3M tiny-moe, "
                        "the width ladder tiny-llama's 3.67 tokens per parameter)")
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drill", type=float, default=None,
                   help="fraction of pretraining documents that are arithmetic-table drill, 0 <= F < 1 "
                        "(default: the shipped build's, 0.25 tiny-llama and its width ladder, 0 tiny-moe)")
    p.add_argument("--keep-tokenizer", action="store_true", help="reuse <out>/tokenizer instead of retraining it")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="architecture override, e.g. hidden_size=64 (for quick test builds)")
    a = p.parse_args(argv)
    for key, value in (("--tokens", a.tokens), ("--vocab", a.vocab), ("--batch", a.batch)):
        if value is not None and value <= 0:
            p.error(f"{key}={value}: must be > 0")
    if a.lr <= 0:
        p.error(f"--lr={a.lr}: must be > 0")
    if a.drill is not None and not 0 <= a.drill < 1:
        p.error(f"--drill={a.drill}: must be in [0, 1)")
    overrides = {}
    for kv in a.override:
        k, _, v = kv.partition("=")
        if not k or not v:
            p.error(f"--override {kv!r}: expected KEY=VALUE")
        overrides[k] = json.loads(v)
    build_tiny(a.out, tuple(a.models), a.tokens, a.vocab, a.lr, a.batch, a.seed, overrides, not a.keep_tokenizer, a.drill)
    return 0


if __name__ == "__main__":
    sys.exit(main())
