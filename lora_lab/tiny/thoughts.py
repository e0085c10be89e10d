"""tiny-openthoughts: step-by-step reasoning traces in open-thoughts/OpenThoughts3-1.2M's schema:

    {"conversations": [{"from": "human", "value": problem},
                       {"from": "gpt", "value": "<think>\\n...steps...\\n</think>\\n\\nfinal answer"}],
     "domain": "math"|"code"|"puzzle", "source": "tiny-openthoughts", "difficulty": int}

Three problem families per domain, every answer computed exactly by the generator:
- math: a chain of operations on a starting number (checked by undoing it), the mean of a list,
  a remainder by repeated subtraction of multiples;
- code: what a short Python snippet prints (a list pipeline, a string pipeline, a loop with an
  accumulator), traced line by line;
- puzzle: an age chain given in shuffled clues, balls swapped between boxes, two islanders who
  are knights (always truthful) or knaves (always lying), solved by checking every case.

The trace style is the same everywhere: an opening line, one paragraph per step stating the
intermediate result, a check, then the closing tag and a one-line answer. `difficulty` is the
number of reasoning steps (1..10). Numbers, invented names and words are random, so distinct
problems grow with num_examples; the held-out split is keyed by the problem text.
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Callable, Iterator

from lora_lab.tiny.common import fixed_eval_split, invented_name, invented_word, require_size

if TYPE_CHECKING:
    from lora_lab.config import DataConfig

# (domain, problem, steps, check, final answer line)
Trace = tuple[str, str, list[str], str, str]

# Short on purpose: the tiny tokenizer spends ~1.7 characters per token on this text, and a row
# should stay within ~100-250 tokens.
_OPENINGS = ("Okay, step by step.", "Let me work it out.", "Alright, carefully.", "Let me think.")


def _short_name(r: random.Random) -> str:
    return invented_name(r, (1, 2))


# ----------------------------------------------------------------------------- math


def _op_chain(r: random.Random) -> Trace:
    x0 = x = r.randint(10, 60)
    said, steps, undo = [], [], []
    for _ in range(r.randint(2, 3)):
        kind = r.choice("+-*/")
        divisors = [d for d in range(2, 10) if x % d == 0]
        if kind == "+":
            b = r.randint(5, 60)
            said.append(f"add {b}")
            steps.append(f"Add {b}: {x} + {b} = {x + b}.")
            undo.append(f"{x + b} - {b} = {x}")
            x += b
        elif kind == "-" and x > 10:
            b = r.randint(1, x - 1)
            said.append(f"subtract {b}")
            steps.append(f"Subtract {b}: {x} - {b} = {x - b}.")
            undo.append(f"{x - b} + {b} = {x}")
            x -= b
        elif kind == "/" and divisors:
            d = r.choice(divisors)
            said.append(f"divide by {d}")
            steps.append(f"Divide by {d}: {x} / {d} = {x // d}, as {d} * {x // d} = {x}.")
            undo.append(f"{x // d} * {d} = {x}")
            x //= d
        else:
            k = r.randint(2, 9)
            said.append(f"multiply by {k}")
            tens, ones = x - x % 10, x % 10
            split = f" ({tens} * {k} + {ones} * {k})" if tens and ones else ""
            steps.append(f"Multiply by {k}: {x} * {k} = {x * k}{split}.")
            undo.append(f"{x * k} / {k} = {x}")
            x *= k
    name = _short_name(r)
    problem = f"{name} starts from {x0} and is told to {', then '.join(said)}. What number does {name} get?"
    check = f"Undo it: {', '.join(reversed(undo))}. Good."
    return "math", problem, steps, check, f"The result is $\\boxed{{{x}}}$."


def _mean(r: random.Random) -> Trace:
    n = r.randint(3, 5)
    xs = [r.randint(5, 95) for _ in range(n - 1)]
    xs.append(next(v for v in range(r.randint(5, 95), 200) if (sum(xs) + v) % n == 0))
    r.shuffle(xs)
    steps, acc = [], xs[0]
    for v in xs[1:]:
        steps.append(f"{acc} + {v} = {acc + v}.")
        acc += v
    m = acc // n
    steps.append(f"{n} numbers, so the mean is {acc} / {n} = {m}.")
    problem = f"Find the mean of {', '.join(map(str, xs))}."
    return "math", problem, steps, f"Check: {n} * {m} = {n * m}. Good.", f"The mean is $\\boxed{{{m}}}$."


def _remainder(r: random.Random) -> Trace:
    d, a = r.randint(3, 12), r.randint(50, 500)
    q, rem = divmod(a, d)
    steps, left = [], a
    for part in (q - q % 10, q % 10):  # tens of the quotient first, then its ones
        if part:
            steps.append(f"{d} * {part} = {d * part}, and {left} - {d * part} = {left - d * part}.")
            left -= d * part
    steps.append(f"{left} is less than {d}, so I stop.")
    problem = f"What is the remainder when {a} is divided by {d}?"
    check = f"Check: {d} * {q} + {rem} = {d * q + rem}. Good."
    return "math", problem, steps, check, f"The remainder is $\\boxed{{{rem}}}$."


# ----------------------------------------------------------------------------- code


def _list_code(r: random.Random) -> Trace:
    xs = [r.randint(1, 20) for _ in range(r.randint(3, 5))]
    lines, steps = [f"xs = {xs}"], []
    for kind in r.sample(range(5), 2):  # no operation twice: a repeat teaches nothing new
        if kind == 0 and len(set(xs)) > 1:
            k = r.choice(sorted(set(xs))[:-1])  # below the maximum: at least one element survives
            line, xs = f"xs = [x for x in xs if x > {k}]", [x for x in xs if x > k]
            steps.append(f"Keep values above {k}: {xs}.")
        elif kind == 1:
            k = r.randint(2, 3)
            line, xs = f"xs = [x * {k} for x in xs]", [x * k for x in xs]
            steps.append(f"Times {k}: {xs}.")
        elif kind == 2:
            line, xs = "xs.sort()", sorted(xs)
            steps.append(f"Sorted: {xs}.")
        elif kind == 3:
            line, xs = "xs.reverse()", xs[::-1]
            steps.append(f"Reversed: {xs}.")
        else:
            v = r.randint(1, 20)
            line, xs = f"xs.append({v})", xs + [v]
            steps.append(f"Append {v}: {xs}.")
        lines.append(line)
    expr, out = r.choice([("sum(xs)", sum(xs)), ("len(xs)", len(xs)), ("xs[0]", xs[0])])
    lines.append(f"print({expr})")
    steps.append(f"{expr} = {out}.")
    return _code(lines, steps, f"Check: xs is {xs} at the end. Good.", out)


def _string_code(r: random.Random) -> Trace:
    s = invented_word(r)
    lines, steps = [f's = "{s}"'], []
    for kind in r.sample(range(4), r.randint(2, 3)):
        if kind == 0:
            line, s = "s = s[::-1]", s[::-1]
            steps.append(f'Reversed: "{s}".')
        elif kind == 1 and s.islower():
            line, s = "s = s.upper()", s.upper()
            steps.append(f'Upper case: "{s}".')
        elif kind == 2 and len(s) > 3:
            line, s = "s = s[1:]", s[1:]
            steps.append(f'Drop the first letter: "{s}".')
        else:
            c, t = r.choice(s), r.choice("aeiouxz")
            line, s = f's = s.replace("{c}", "{t}")', s.replace(c, t)
            steps.append(f'Every "{c}" becomes "{t}": "{s}".')
        lines.append(line)
    if r.random() < 0.5:
        lines.append("print(len(s))")
        steps.append(f'"{s}" has {len(s)} letters.')
        return _code(lines, steps, f"Check: I count {len(s)} again. Good.", len(s))
    lines.append("print(s)")
    return _code(lines, steps, f'Check: s is "{s}" at the end. Good.', s)


def _loop_code(r: random.Random) -> Trace:
    xs = [r.randint(1, 20) for _ in range(3)]
    m, add, pen = r.choice([2, 3]), r.choice(["x", "2 * x"]), r.randint(1, 3)
    total, steps = 0, []
    for x in xs:
        if x % m == 0:
            gain = x if add == "x" else 2 * x
            steps.append(f"{x} % {m} is 0: total = {total} + {gain} = {total + gain}.")
            total += gain
        else:
            steps.append(f"{x} % {m} is {x % m}: total = {total} - {pen} = {total - pen}.")
            total -= pen
    lines = ["total = 0", f"for x in {xs}:", f"    if x % {m} == 0: total += {add}", f"    else: total -= {pen}",
             "print(total)"]
    return _code(lines, steps, f"Check: {len(xs)} values, {len(xs)} updates. Good.", total)


def _code(lines: list[str], steps: list[str], check: str, out) -> Trace:
    problem = "What does this Python code print?\n```python\n" + "\n".join(lines) + "\n```"
    return "code", problem, steps, check, f"It prints `{out}`."


# ----------------------------------------------------------------------------- puzzles


def _ages(r: random.Random) -> Trace:
    n = r.randint(3, 4)
    names: list[str] = []
    while len(names) < n:
        name = _short_name(r)
        if name not in names:
            names.append(name)
    ages = [r.randint(3, 12)]
    clues, steps = [f"{names[0]} is {ages[0]}."], [f"{names[0]} is {ages[0]}, given."]
    for i in range(1, n):
        j = r.randrange(i)
        kind = r.randrange(3)
        if kind == 0:
            d = r.randint(1, 9)
            ages.append(ages[j] + d)
            clues.append(f"{names[i]} is {d} years older than {names[j]}.")
            steps.append(f"{names[i]} = {ages[j]} + {d} = {ages[i]}.")
        elif kind == 1 and ages[j] > 2:
            d = r.randint(1, ages[j] - 1)
            ages.append(ages[j] - d)
            clues.append(f"{names[i]} is {d} years younger than {names[j]}.")
            steps.append(f"{names[i]} = {ages[j]} - {d} = {ages[i]}.")
        else:
            ages.append(ages[j] * 2)
            clues.append(f"{names[i]} is twice as old as {names[j]}.")
            steps.append(f"{names[i]} = 2 * {ages[j]} = {ages[i]}.")
    r.shuffle(clues)  # the trace must find the order in which the clues resolve
    problem = " ".join(clues) + f" How old is {names[-1]}?"
    return "puzzle", problem, steps, "Check: every clue holds. Good.", f"{names[-1]} is **{ages[-1]}**."


_BALLS = ("red", "blue", "green", "white", "black", "pink")


def _swaps(r: random.Random) -> Trace:
    n = r.randint(3, 4)
    boxes = r.sample(_BALLS, n)
    problem = "Boxes 1 to {} hold the balls {}. ".format(n, ", ".join(boxes))
    swaps, steps = [], []
    for _ in range(r.randint(2, 3)):
        i, j = sorted(r.sample(range(n), 2))
        while swaps and swaps[-1] == f"{i + 1} and {j + 1}":  # the same swap twice just undoes it
            i, j = sorted(r.sample(range(n), 2))
        boxes[i], boxes[j] = boxes[j], boxes[i]
        swaps.append(f"{i + 1} and {j + 1}")
        steps.append(f"Swap {i + 1} and {j + 1}: {', '.join(boxes)}.")
    colour = r.choice(boxes)
    where = boxes.index(colour) + 1
    problem += f"We swap boxes {', then '.join(swaps)}. Which box has the {colour} ball?"
    return "puzzle", problem, steps, f"Check: {n} balls, one per box. Good.", f"The {colour} ball is in box **{where}**."


# Statements an islander can make, as a function of (speaker is a knight, other is a knight).
_CLAIMS: tuple[tuple[str, Callable[[bool, bool], bool]], ...] = (
    ("{o} is a knave.", lambda me, o: not o),
    ("{o} is a knight.", lambda me, o: o),
    ("We are both knights.", lambda me, o: me and o),
    ("One of us is a knave.", lambda me, o: not (me and o)),
    ("We are the same kind.", lambda me, o: me == o),
    ("We are different kinds.", lambda me, o: me != o),
    ("We are both knaves.", lambda me, o: (not me) and (not o)),
)


def _kind(k: bool) -> str:
    return "knight" if k else "knave"


def _knights(r: random.Random) -> Trace:
    a = b = invented_name(r, (1, 1))  # one syllable: each name appears seven times
    while b == a:
        b = invented_name(r, (1, 1))
    while True:  # redraw the claims until exactly one assignment is consistent
        ca, cb = r.randrange(len(_CLAIMS)), r.randrange(len(_CLAIMS))
        ok = [(x, y) for x in (True, False) for y in (True, False)
              if _CLAIMS[ca][1](x, y) == x and _CLAIMS[cb][1](y, x) == y]
        if len(ok) == 1:
            break
    steps = []
    for x in (True, False):
        for y in (True, False):
            ta, tb = _CLAIMS[ca][1](x, y), _CLAIMS[cb][1](y, x)
            if ta != x:
                why = f"{a} {'lies' if x else 'is truthful'}, no."
            elif tb != y:
                why = f"{b} {'lies' if y else 'is truthful'}, no."
            else:
                why = "both fit, yes."
            steps.append(f"{_kind(x)}, {_kind(y)}: {why}")
    x, y = ok[0]
    problem = (f"Knights never lie, knaves always lie. {a} says: \"{_CLAIMS[ca][0].format(o=b)}\" "
               f"{b} says: \"{_CLAIMS[cb][0].format(o=a)}\" What are {a} and {b}?")
    return "puzzle", problem, steps, "Only one case fits. Good.", f"{a}: **{_kind(x)}**, {b}: **{_kind(y)}**."


_FAMILIES = (_op_chain, _mean, _remainder, _list_code, _string_code, _loop_code, _ages, _swaps, _knights)


def trace_row(trace: Trace, opening: str) -> dict:
    domain, problem, steps, check, final = trace
    think = "\n".join([opening, *steps, check])
    return {"conversations": [{"from": "human", "value": problem},
                              {"from": "gpt", "value": f"<think>\n{think}\n</think>\n\n{final}"}],
            "domain": domain, "source": "tiny-openthoughts", "difficulty": min(10, max(1, len(steps)))}


def _stream(seed: int) -> Iterator[tuple[str, dict]]:
    r = random.Random(seed)
    while True:
        trace = r.choice(_FAMILIES)(r)
        yield trace[1], trace_row(trace, r.choice(_OPENINGS))


def tiny_openthoughts_rows(n: int, seed: int) -> list[dict]:
    """n rows of the training stream (no held-out split): for inspection and tokenizer corpora."""
    return [row for _, row in itertools.islice(_stream(seed), n)]


def load_tiny_openthoughts(cfg: "DataConfig") -> tuple[list[dict], list[dict]]:
    return fixed_eval_split(_stream, cfg.seed, require_size(cfg, "tiny-openthoughts"), cfg.eval_size, "tiny-openthoughts")
