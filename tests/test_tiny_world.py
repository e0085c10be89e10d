"""Generated data sets: determinism, exact schemas of the real sets, fixed eval splits, exact answers,
the information content of tiny-facts, and variety that grows with size."""

import contextlib
import io
import itertools
import math
import re
import time

import pytest

from lora_lab.config import compose
from lora_lab.data import DATASETS, encode_chat, IGNORE_INDEX
from lora_lab.tiny.facts import (ATTRIBUTES, CITIES, Attribute, Fact, bits_per_fact, fact_messages, facts_information_bits,
                                 facts_table, load_tiny_facts, load_tiny_facts_heldout)
from lora_lab.answers import reference_answer
from lora_lab.tiny.maths import gsm8k_row, math_row, problems
from lora_lab.tiny.world import TINY_DATASETS

NEW_SETS = ("tiny-openthoughts", "tiny-facts", "tiny-facts-heldout", "tiny-math")


def data(name: str, *overrides: str):
    return compose([f"data={name}", *overrides]).data


def load(name: str, *overrides: str):
    return DATASETS[name](data(name, *overrides))


def messages(row: dict) -> list[dict]:
    """Schema -> chat, written here so the test does not depend on data.py's conversion."""
    if "messages" in row:
        return row["messages"]
    if "conversations" in row:
        role = {"human": "user", "gpt": "assistant"}
        return [{"role": role[t["from"]], "content": t["value"]} for t in row["conversations"]]
    q, a = ("question", "answer") if "question" in row else ("problem", "solution")
    return [{"role": "user", "content": row[q]}, {"role": "assistant", "content": row[a]}]


def prompt(row: dict) -> str:
    return messages(row)[0]["content"]


# ----------------------------------------------------------------------------- all sets


def test_registered_and_accepted_by_the_config():
    assert set(NEW_SETS) <= set(TINY_DATASETS) and set(TINY_DATASETS) <= set(DATASETS)
    for name in NEW_SETS:
        cfg = data(name)
        assert cfg.name == name and cfg.num_examples and cfg.max_seq_len >= 256


@pytest.mark.parametrize("name", NEW_SETS)
def test_deterministic_in_the_seed(name):
    a = load(name, "data.num_examples=200", "data.eval_size=30")
    assert a == load(name, "data.num_examples=200", "data.eval_size=30")
    b = load(name, "data.num_examples=200", "data.eval_size=30", "data.seed=5")
    assert a[0] != b[0] and a[1] != b[1]


@pytest.mark.parametrize("name", NEW_SETS)
def test_eval_split_is_fixed_and_train_grows_by_prefix(name):
    train, held = load(name, "data.num_examples=400", "data.eval_size=50")
    train2, held2 = load(name, "data.num_examples=150", "data.eval_size=50")
    assert len(train) == 400 and len(held) == 50
    assert held2 == held and train2 == train[:150]


@pytest.mark.parametrize("name", ["tiny-openthoughts", "tiny-math", "tiny-facts-heldout"])
def test_held_out_prompts_are_not_trained_on(name):
    train, held = load(name, "data.num_examples=1000", "data.eval_size=100")
    assert not {prompt(r) for r in train} & {prompt(r) for r in held}


def test_a_generated_set_needs_a_size():
    from lora_lab.config import ConfigError

    for name in NEW_SETS:
        with pytest.raises(ConfigError, match="num_examples"):
            DATASETS[name](data(name, "data.num_examples=null"))


@pytest.mark.parametrize("name", NEW_SETS)
def test_variety_grows_with_size(name):
    small, _ = load(name, "data.num_examples=500", "data.eval_size=10")
    large, _ = load(name, "data.num_examples=2000", "data.eval_size=10")
    n_small, n_large = len({prompt(r) for r in small}), len({prompt(r) for r in large})
    assert n_large > 3.3 * n_small * 0.9 and n_large > 0.8 * 2000  # ~ one new prompt per example


@pytest.mark.parametrize("name", NEW_SETS)
def test_rows_fit_max_seq_len_and_have_targets(name):
    from lora_lab.models import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    cfg = data(name, "data.num_examples=150", "data.eval_size=20")
    train, held = DATASETS[name](cfg)
    for row in train + held:
        ids, labels = encode_chat(tok, messages(row), 10**6)
        assert len(ids) <= cfg.max_seq_len, (len(ids), row)
        assert sum(t != IGNORE_INDEX for t in labels) > 5


@pytest.mark.parametrize("name", NEW_SETS)
def test_the_shared_loader_reads_every_row(name):
    """One loader serves both scales: data.py's schema -> chat conversion accepts every generated row."""
    from lora_lab.data import _messages

    train, held = load(name, "data.num_examples=500", "data.eval_size=50")
    assert all(_messages(row) == messages(row) for row in train + held)


def test_20k_rows_generate_fast():
    for name in NEW_SETS:
        t = time.perf_counter()
        train, _ = load(name, "data.num_examples=20000")
        # ~0.1-0.6 s each on one core; the bound is loose for busy CI machines.
        assert len(train) == 20000 and time.perf_counter() - t < 5.0, name


# ----------------------------------------------------------------------------- tiny-openthoughts


def test_openthoughts_schema():
    train, held = load("tiny-openthoughts", "data.num_examples=300", "data.eval_size=30")
    domains = set()
    for row in train + held:
        assert set(row) == {"conversations", "domain", "source", "difficulty"}
        assert row["source"] == "tiny-openthoughts" and type(row["difficulty"]) is int and 1 <= row["difficulty"] <= 10
        human, gpt = row["conversations"]
        assert set(human) == set(gpt) == {"from", "value"} and (human["from"], gpt["from"]) == ("human", "gpt")
        assert gpt["value"].startswith("<think>\n") and gpt["value"].count("\n</think>\n\n") == 1
        assert gpt["value"].split("\n</think>\n\n")[1].strip()
        domains.add(row["domain"])
    assert domains == {"math", "code", "puzzle"}


_CLAIMS = {"{o} is a knave.": lambda me, o: not o, "{o} is a knight.": lambda me, o: o,
           "We are both knights.": lambda me, o: me and o, "One of us is a knave.": lambda me, o: not (me and o),
           "We are the same kind.": lambda me, o: me == o, "We are different kinds.": lambda me, o: me != o,
           "We are both knaves.": lambda me, o: not me and not o}


def _solve(problem: str) -> str:
    """An independent solver for each problem family, reading only the problem text."""
    if problem.startswith("What does this Python code print?"):
        code = problem.split("```python\n")[1].split("\n```")[0]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, {})  # the generator's own snippets: a few list/string/loop lines
        return out.getvalue().strip()
    if m := re.fullmatch(r"Find the mean of ([\d, ]+)\.", problem):
        xs = [int(x) for x in m[1].split(", ")]
        assert sum(xs) % len(xs) == 0
        return str(sum(xs) // len(xs))
    if m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", problem):
        return str(int(m[1]) % int(m[2]))
    if m := re.fullmatch(r"\w+ starts from (\d+) and is told to (.*)\. What number does \w+ get\?", problem):
        x = int(m[1])
        for op in m[2].split(", then "):
            verb, n = op.rsplit(" ", 1)
            x = {"add": x + int(n), "subtract": x - int(n), "multiply by": x * int(n), "divide by": x / int(n)}[verb]
        assert x == int(x)
        return str(int(x))
    if m := re.fullmatch(r"Boxes 1 to (\d) hold the balls ([\w, ]+)\. We swap boxes (.*)\. Which box has the (\w+) ball\?", problem):
        boxes = m[2].split(", ")
        for pair in m[3].split(", then "):
            i, j = (int(v) - 1 for v in pair.split(" and "))
            boxes[i], boxes[j] = boxes[j], boxes[i]
        return str(boxes.index(m[4]) + 1)
    if m := re.fullmatch(r"Knights never lie, knaves always lie\. (\w+) says: \"(.*)\" (\w+) says: \"(.*)\" What are .*", problem):
        a, sa, b, sb = m.groups()
        fa, fb = _CLAIMS[sa.replace(b, "{o}")], _CLAIMS[sb.replace(a, "{o}")]
        ok = [(x, y) for x in (True, False) for y in (True, False) if fa(x, y) == x and fb(y, x) == y]
        assert len(ok) == 1
        kind = {True: "knight", False: "knave"}
        return f"{a}: {kind[ok[0][0]]}, {b}: {kind[ok[0][1]]}"
    if m := re.fullmatch(r"(.*) How old is (\w+)\?", problem):
        ages: dict[str, int] = {}
        clues = re.findall(r"(\w+) is ([^.]*)\.", m[1])
        while len(ages) < len(clues):
            for who, what in clues:
                if c := re.fullmatch(r"(\d+)", what):
                    ages[who] = int(c[1])
                elif (c := re.fullmatch(r"(\d+) years (older|younger) than (\w+)", what)) and c[3] in ages:
                    ages[who] = ages[c[3]] + (int(c[1]) if c[2] == "older" else -int(c[1]))
                elif (c := re.fullmatch(r"twice as old as (\w+)", what)) and c[1] in ages:
                    ages[who] = 2 * ages[c[1]]
        return str(ages[m[2]])
    raise AssertionError(f"unknown problem family: {problem!r}")


def _final(answer: str) -> str:
    tail = answer.split("\n</think>\n\n")[1]
    if m := re.search(r"\\boxed\{(-?\d+)\}", tail):
        return m[1]
    if m := re.fullmatch(r"It prints `(.*)`\.", tail):
        return m[1]
    if m := re.fullmatch(r"(\w+): \*\*(\w+)\*\*, (\w+): \*\*(\w+)\*\*\.", tail):
        return f"{m[1]}: {m[2]}, {m[3]}: {m[4]}"
    return re.search(r"\*\*(-?\d+)\*\*", tail)[1]


def test_openthoughts_answers_are_exact():
    train, _ = load("tiny-openthoughts", "data.num_examples=600", "data.eval_size=10")
    for row in train:
        human, gpt = row["conversations"]
        assert _final(gpt["value"]) == _solve(human["value"]), row


def test_openthoughts_traces_are_step_by_step():
    train, _ = load("tiny-openthoughts", "data.num_examples=300", "data.eval_size=10")
    for row in train:
        think = row["conversations"][1]["value"].split("\n</think>")[0]
        assert len(think.split("\n")) >= 4  # opening, >= 2 steps, check


# ----------------------------------------------------------------------------- tiny-facts


def test_facts_information_bits():
    assert bits_per_fact() == pytest.approx(4 + 6 + math.log2(1000))
    for n in (100, 2048, 20000):
        assert facts_information_bits(data("tiny-facts", f"data.num_examples={n}")) == pytest.approx(n * 19.965784284662087)


def test_facts_information_bits_by_brute_force():
    """With small vocabularies, count the distinct answer sets of N entities: log2(count) = formula."""
    small = tuple(Attribute(a.key, a.values[:k], a.answer, a.train_questions, a.eval_questions)
                  for a, k in zip(ATTRIBUTES, (3, 4, 5)))
    names, n = ("Brouk", "Zeimar"), 2
    answers = set()
    for values in itertools.product(*[range(len(a.values)) for a in small] * n):
        facts = [Fact(name, tuple(values[3 * i: 3 * i + 3]), (0, 1, 2), (0, 0, 0)) for i, name in enumerate(names)]
        answers.add(tuple(m["content"] for f in facts for m in fact_messages(f, attributes=small) if m["role"] == "assistant"))
    assert math.log2(len(answers)) == pytest.approx(n * bits_per_fact(small))


def test_fact_answers_are_injective_in_the_value():
    """The formula counts answer entropy as value entropy: distinct values must give distinct answers."""
    for a in ATTRIBUTES:
        assert len(set(a.values)) == len(a.values)
        assert len({a.answer.format(name="Brouk", value=v) for v in a.values}) == len(a.values)
        assert not set(a.train_questions) & set(a.eval_questions)


def test_fact_values_are_uniform():
    table = facts_table(data("tiny-facts", "data.num_examples=16000"))
    for a in ATTRIBUTES[:2]:
        counts = [sum(row[a.key] == v for row in table) for v in a.values]
        mean = len(table) / len(a.values)
        assert all(abs(c - mean) < 5 * math.sqrt(mean) for c in counts), a.key


def test_facts_schema_and_unique_names():
    train, held = load_tiny_facts_heldout(data("tiny-facts", "data.num_examples=3000", "data.eval_size=200"))
    for row in train + held:
        assert set(row) == {"id", "source", "messages"} and row["source"] == "tiny-facts"
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 3
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in row["messages"])
    names = [row["messages"][1]["content"].split(" ")[0].removesuffix("'s") for row in train + held]
    assert len(set(names)) == len(names) == 3200 and not set(names) & set(CITIES)
    assert len({row["id"] for row in train + held}) == 3200


def test_facts_eval_reasks_training_facts_in_new_words():
    cfg = data("tiny-facts", "data.num_examples=500", "data.eval_size=64")
    train, reask = load_tiny_facts(cfg)
    assert train == load_tiny_facts_heldout(cfg)[0] and len(reask) == 64
    train_questions = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    for row, orig in zip(reask, train):
        ans = lambda r: sorted(m["content"] for m in r["messages"] if m["role"] == "assistant")  # noqa: E731
        assert ans(row) == ans(orig)
        assert not {m["content"] for m in row["messages"] if m["role"] == "user"} & train_questions
    assert len(load_tiny_facts(data("tiny-facts", "data.num_examples=10", "data.eval_size=64"))[1]) == 10


# ----------------------------------------------------------------------------- tiny-math


def _recompute(key: tuple) -> int:
    """Each problem kind's answer from its numbers, by a formula independent of the step rendering."""
    kind, *v = key
    if kind in ("arith2", "arith3", "word2"):
        return eval(v[0].replace("\\times", "*"))  # "12 + 7 \\times 3": digits and operators only
    formulas = {"add1": lambda a, b: a + b, "crate": lambda a, b: a * b, "shop": lambda n, p, note: note - n * p,
                "gather": lambda a, d, g: a * d - g, "share": lambda a, b, k: (a + b) // k,
                "eq": lambda a, b, c: (c - b) // a, "temp": lambda t, a, b, c: t + a - b - c,
                "account": lambda s, n, p, g: s - n * p + g, "basket": lambda a, p, b, pb, c: (a - c) * p + b * pb}
    return formulas[kind](*v)


def test_math_answers_are_correct_in_both_schemas():
    negative = 0
    for p in itertools.islice(problems(3), 3000):
        assert p.answer == _recompute(p.key), p
        if p.key[0] == "eq":
            a, b, c = p.key[1:]
            assert (c - b) % a == 0
        if p.key[0] == "share":
            assert sum(p.key[1:3]) % p.key[3] == 0
        g, m = gsm8k_row(p), math_row(p)
        assert reference_answer(g) == reference_answer(m) == str(p.answer)
        for expr, val in re.findall(r"<<([^=]+)=([^>]+)>>", g["answer"]):  # GSM8K calculator annotations
            assert eval(expr) == int(val)
        assert all(str(n) in p.question for n in p.key[1:] if isinstance(n, int))
        negative += p.answer < 0
    assert negative > 0


def test_math_schemas_levels_and_answer_format():
    mixed, _ = load("tiny-math", "data.num_examples=1000", "data.eval_size=10")
    shapes = [tuple(sorted(r)) for r in mixed]
    assert set(shapes) == {("answer", "question"), ("level", "problem", "solution", "type")}
    assert 0.4 < shapes.count(("answer", "question")) / len(shapes) < 0.6
    for fmt, keys in (("gsm8k", {"question", "answer"}), ("math", {"problem", "level", "type", "solution"})):
        rows, held = load("tiny-math", "data.num_examples=300", "data.eval_size=20", f"data.answer_format={fmt}")
        assert all(set(r) == keys and all(isinstance(v, str) for v in r.values()) for r in rows + held)
    rows, _ = load("tiny-math", "data.num_examples=400", "data.eval_size=20", "data.answer_format=math", "data.levels=[1,2]")
    assert {r["level"] for r in rows} == {"Level 1", "Level 2"}
    rows, _ = load("tiny-math", "data.num_examples=200", "data.eval_size=20", "data.answer_format=math")
    assert {r["level"] for r in rows} == {f"Level {i}" for i in range(1, 6)} and {r["type"] for r in rows} == {"Prealgebra", "Algebra"}
    for r in load("tiny-math", "data.num_examples=100", "data.eval_size=20", "data.answer_format=gsm8k", "data.levels=[1]")[0]:
        a, b = map(int, re.search(r"(\d) \+ (\d)|(\d) and (\d)", r["question"]).group(0).replace(" and ", " + ").split(" + "))
        assert r["answer"].endswith(f"\n#### {a + b}")


def test_math_levels_are_validated():
    from lora_lab.config import ConfigError

    with pytest.raises(ConfigError, match="levels"):
        load("tiny-math", "data.levels=[0,6]")
    # Level 1 has 100 problems: a held-out split that takes them all leaves nothing to train on.
    with pytest.raises(ValueError, match="held-out"):
        load("tiny-math", "data.levels=[1]", "data.eval_size=2000", "data.num_examples=10")


def test_reference_answer_on_real_style_rows():
    assert reference_answer({"question": "q", "answer": "He has 5+3 = <<5+3=8>>8.\n#### 1,234"}) == "1234"
    assert reference_answer({"problem": "p", "solution": "So $x = \\boxed{\\frac{1}{2}}$."}) == "\\frac{1}{2}"
    assert reference_answer({"problem": "p", "solution": "$\\boxed{3}$ or rather $\\boxed{-4}$"}) == "-4"
    with pytest.raises(ValueError):
        reference_answer({"problem": "p", "solution": "no answer"})
