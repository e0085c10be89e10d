"""tiny-math: arithmetic and word problems with verifiable integer answers, in GSM8K's or MATH's schema.

    gsm8k form: {"question": str, "answer": "...worked steps with <<calc=result>> annotations...\\n#### 42"}
    math form:  {"problem": str, "level": "Level 1".."Level 5", "type": "Prealgebra"|"Algebra",
                 "solution": "... $LaTeX$ steps ... The answer is $\\boxed{42}$."}

`data.answer_format` picks the schema of each row: gsm8k, math, or mixed (a seeded coin per row);
`data.levels` keeps some difficulty levels (null: all five, drawn uniformly):

    1  one step, single digits:        What is 3 + 4?
    2  one step, two digits or a times table, or a one-step word problem with small numbers
    3  two steps (a + b x c, (a + b) x c, ...) or a one-step word problem with two-digit numbers
    4  two-step word problems (shopping change, collecting, sharing) and ax + b = c
    5  three-step word problems with 2-3 digit numbers (temperatures, balances, baskets) and
       ax + b = c with negative solutions; answers may be negative

Levels 1-2 are meant to be within reach of the pretrained tiny model before RL (its corpus has the
small tables and column sums in another surface form). Names are invented and numbers random, so
the number of distinct problems grows with num_examples (level 1 alone has only 100 problems, and
with data.levels=[1] a held-out split of 128 takes most of them: use a small eval_size there).
The held-out split is keyed by the problem's numbers (not its wording), so no held-out problem is
trained on in another phrasing or schema. `lora_lab.answers.reference_answer(row)` returns the exact answer string
of a row of either schema (also of real GSM8K / MATH rows), which the RL reward compares to.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from lora_lab.tiny.common import fixed_eval_split, invented_name, require_size

if TYPE_CHECKING:
    from lora_lab.config import DataConfig

LEVELS = (1, 2, 3, 4, 5)
_ITEMS = ("shells", "lanterns", "acorns", "stamps", "feathers", "beads", "kites", "tickets", "ribbons", "crystals",
          "pebbles", "candles", "scrolls", "buttons", "seeds", "coins")
_CURRENCY = "glims"


@dataclass(frozen=True)
class Step:
    text: str  # a sentence with "{calc}" where the calculation goes
    expr: str  # the calculation in LaTeX ("7 \\times 8"); the GSM8K form is derived from it
    value: int
    lhs: str = ""  # what the calculation equals, written before it ("4x = ")


@dataclass(frozen=True)
class Problem:
    level: int
    type: str
    question: str  # MATH wording: math in $...$, \\times; the GSM8K wording is derived from it
    steps: tuple[Step, ...]
    key: tuple  # the problem's numbers: the held-out split is keyed by this, not by the wording

    @property
    def answer(self) -> int:
        return self.steps[-1].value


def _plain(tex: str) -> str:
    return tex.replace("$", "").replace("\\times", "times").replace("\\div", "divided by")


def _calc_gsm8k(s: Step) -> str:
    expr = s.expr.replace("\\times", "*").replace("\\div", "/")
    return f"{s.lhs}{expr} = <<{expr.replace(' ', '')}={s.value}>>{s.value}"


def _p(r: random.Random, templates: tuple[str, ...], **kw) -> str:
    return r.choice(templates).format(**kw)


def _n(x: int) -> str:
    """A number inside an expression: negatives in brackets."""
    return f"({x})" if x < 0 else str(x)


# ----------------------------------------------------------------------------- levels

_WHAT = ("What is ${e}$?", "Compute ${e}$.", "Evaluate ${e}$.", "Find the value of ${e}$.")


def _level1(r: random.Random) -> Problem:
    a, b = r.randint(0, 9), r.randint(0, 9)
    q = _p(r, _WHAT + ("Find the sum of ${a}$ and ${b}$.", "What do you get when you add ${a}$ and ${b}$?"),
           e=f"{a} + {b}", a=a, b=b)
    return Problem(1, "Prealgebra", q, (Step("{calc}.", f"{a} + {b}", a + b),), ("add1", a, b))


def _level2(r: random.Random) -> Problem:
    kind = r.randrange(4)
    if kind == 0:
        a, b = r.randint(10, 99), r.randint(10, 99)
        e, v = f"{a} + {b}", a + b
    elif kind == 1:
        a, b = sorted((r.randint(10, 99), r.randint(10, 99)), reverse=True)
        e, v = f"{a} - {b}", a - b
    elif kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        e, v = f"{a} \\times {b}", a * b
    else:
        who, item = invented_name(r, (2, 2)), r.choice(_ITEMS)
        a, b = r.randint(2, 20), r.randint(1, 9)
        if r.random() < 0.5:
            q = f"{who} has {a} {item} and finds {b} more. How many {item} does {who} have now?"
            step = Step(f"{who} now has {{calc}} {item}.", f"{a} + {b}", a + b)
        else:
            a = max(a, b)
            q = f"{who} had {a} {item} and gave {b} of them away. How many {item} are left?"
            step = Step(f"{who} has {{calc}} {item} left.", f"{a} - {b}", a - b)
        return Problem(2, "Prealgebra", q, (step,), ("word2", step.expr))
    return Problem(2, "Prealgebra", _p(r, _WHAT, e=e), (Step("{calc}.", e, v),), ("arith2", e))


def _level3(r: random.Random) -> Problem:
    kind = r.randrange(4)
    if kind == 0:
        a, b, c = r.randint(10, 99), r.randint(2, 9), r.randint(2, 9)
        e = f"{a} + {b} \\times {c}"
        steps = (Step("First multiply: {calc}.", f"{b} \\times {c}", b * c),
                 Step("Then add: {calc}.", f"{a} + {b * c}", a + b * c))
    elif kind == 1:
        a, b, c = r.randint(2, 20), r.randint(2, 20), r.randint(2, 9)
        e = f"({a} + {b}) \\times {c}"
        steps = (Step("First the brackets: {calc}.", f"{a} + {b}", a + b),
                 Step("Then multiply: {calc}.", f"{a + b} \\times {c}", (a + b) * c))
    elif kind == 2:
        a, b = r.randint(2, 9), r.randint(2, 9)
        c = r.randint(1, a * b)
        e = f"{a} \\times {b} - {c}"
        steps = (Step("First multiply: {calc}.", f"{a} \\times {b}", a * b),
                 Step("Then subtract: {calc}.", f"{a * b} - {c}", a * b - c))
    else:
        who, item = invented_name(r, (2, 2)), r.choice(_ITEMS)
        a, b = r.randint(11, 40), r.randint(2, 9)
        q = f"A crate holds {a} {item}. {who} fills {b} crates. How many {item} does {who} pack in all?"
        step = Step(f"{who} packs {{calc}} {item}.", f"{a} \\times {b}", a * b)
        return Problem(3, "Prealgebra", q, (step,), ("crate", a, b))
    return Problem(3, "Prealgebra", _p(r, _WHAT, e=e), steps, ("arith3", e))


def _equation(r: random.Random, level: int) -> Problem:
    a = r.randint(2, 9)
    x = r.randint(2, 20) if level == 4 else r.randint(-30, 30)
    b = r.randint(1, 50) if level == 4 else r.randint(100, 400)
    c = a * x + b
    q = _p(r, ("If ${a}x + {b} = {c}$, what is $x$?", "Solve ${a}x + {b} = {c}$ for $x$."), a=a, b=b, c=c)
    steps = (Step(f"Subtract {b} from both sides: {{calc}}.", f"{c} - {b}", a * x, f"{a}x = "),
             Step(f"Divide both sides by {a}: {{calc}}.", f"{_n(a * x)} \\div {a}", x, "x = "))
    return Problem(level, "Algebra", q, steps, ("eq", a, b, c))


def _level4(r: random.Random) -> Problem:
    kind = r.randrange(4)
    who, other, item = invented_name(r, (2, 2)), invented_name(r, (2, 2)), r.choice(_ITEMS)
    if kind == 0:
        n, p = r.randint(2, 9), r.randint(5, 30)
        note = next(x for x in (20, 50, 100, 200, 500) if x > n * p)
        q = (f"{who} buys {n} {item} at {p} {_CURRENCY} each and pays with a {note}-{_CURRENCY[:-1]} note. "
             f"How many {_CURRENCY} of change does {who} get back?")
        steps = (Step(f"The {item} cost {{calc}} {_CURRENCY}.", f"{n} \\times {p}", n * p),
                 Step(f"The change is {{calc}} {_CURRENCY}.", f"{note} - {n * p}", note - n * p))
        return Problem(4, "Prealgebra", q, steps, ("shop", n, p, note))
    if kind == 1:
        a, d = r.randint(11, 40), r.randint(2, 9)
        g = r.randint(10, a * d - 1)
        q = f"{who} gathers {a} {item} every day for {d} days, then gives {g} of them to {other}. How many {item} does {who} keep?"
        steps = (Step(f"In {d} days {who} gathers {{calc}} {item}.", f"{a} \\times {d}", a * d),
                 Step(f"After giving some to {other}, {who} keeps {{calc}} {item}.", f"{a * d} - {g}", a * d - g))
        return Problem(4, "Prealgebra", q, steps, ("gather", a, d, g))
    if kind == 2:
        k, each = r.randint(2, 9), r.randint(3, 25)
        a = r.randint(1, k * each - 1)
        b = k * each - a
        q = f"{who} has {a} {item} and {other} has {b}. They pool them and share them equally among {k} friends. How many {item} does each friend get?"
        steps = (Step("Together they have {calc} " + item + ".", f"{a} + {b}", a + b),
                 Step("Each friend gets {calc} " + item + ".", f"{a + b} \\div {k}", each))
        return Problem(4, "Prealgebra", q, steps, ("share", a, b, k))
    return _equation(r, 4)


def _level5(r: random.Random) -> Problem:
    kind = r.randrange(4)
    who, item, other = invented_name(r, (2, 2)), r.choice(_ITEMS), r.choice(_ITEMS)
    if kind == 0:
        t0, a, b, c = r.randint(-10, 30), r.randint(10, 60), r.randint(10, 60), r.randint(10, 60)
        town = invented_name(r, (2, 3))
        q = (f"At dawn it is {t0} degrees in {town}. By noon the temperature rises by {a} degrees, by dusk it falls by "
             f"{b} degrees, and by midnight it falls another {c} degrees. What is the temperature at midnight?")
        steps = (Step("At noon it is {calc} degrees.", f"{t0} + {a}", t0 + a),
                 Step("At dusk it is {calc} degrees.", f"{t0 + a} - {b}", t0 + a - b),
                 Step("At midnight it is {calc} degrees.", f"{_n(t0 + a - b)} - {c}", t0 + a - b - c))
        return Problem(5, "Prealgebra", q, steps, ("temp", t0, a, b, c))
    if kind == 1:
        s, n, p, g = r.randint(100, 500), r.randint(2, 9), r.randint(20, 120), r.randint(10, 300)
        q = (f"{who}'s account holds {s} {_CURRENCY}. {who} pays {n} bills of {p} {_CURRENCY} each and then receives "
             f"{g} {_CURRENCY}. What is the balance of the account now?")
        steps = (Step("The bills come to {calc} " + _CURRENCY + ".", f"{n} \\times {p}", n * p),
                 Step("After paying, the balance is {calc} " + _CURRENCY + ".", f"{s} - {n * p}", s - n * p),
                 Step("After receiving, it is {calc} " + _CURRENCY + ".", f"{_n(s - n * p)} + {g}", s - n * p + g))
        return Problem(5, "Prealgebra", q, steps, ("account", s, n, p, g))
    if kind == 2:
        a, p, b, pb = r.randint(4, 15), r.randint(11, 60), r.randint(2, 9), r.randint(11, 60)
        c = r.randint(1, a - 1)
        q = (f"{who} buys {a} {item} at {p} {_CURRENCY} each and {b} {other} at {pb} {_CURRENCY} each, then returns "
             f"{c} of the {item} for a refund. How many {_CURRENCY} does {who} spend in the end?")
        steps = (Step(f"{who} keeps {{calc}} {item}.", f"{a} - {c}", a - c),
                 Step(f"They cost {{calc}} {_CURRENCY}.", f"{a - c} \\times {p}", (a - c) * p),
                 Step(f"The {other} cost {{calc}} {_CURRENCY}.", f"{b} \\times {pb}", b * pb),
                 Step("In total that is {calc} " + _CURRENCY + ".", f"{(a - c) * p} + {b * pb}", (a - c) * p + b * pb))
        return Problem(5, "Prealgebra", q, steps, ("basket", a, p, b, pb, c))
    return _equation(r, 5)


_GENERATORS: dict[int, Callable[[random.Random], Problem]] = {1: _level1, 2: _level2, 3: _level3, 4: _level4, 5: _level5}


# ----------------------------------------------------------------------------- schemas


def gsm8k_row(p: Problem) -> dict:
    lines = [s.text.replace("{calc}", _calc_gsm8k(s)).replace("$", "") for s in p.steps]
    return {"question": _plain(p.question), "answer": "\n".join(lines) + f"\n#### {p.answer}"}


def math_row(p: Problem) -> dict:
    sents = [s.text.replace("{calc}", f"${s.lhs}{s.expr} = {s.value}$") for s in p.steps]
    solution = " ".join(sents) + f" The answer is $\\boxed{{{p.answer}}}$."
    return {"problem": p.question, "level": f"Level {p.level}", "type": p.type, "solution": solution}


def _check_levels(levels: list[int] | None) -> tuple[int, ...]:
    if not levels:
        return LEVELS
    if not set(levels) <= set(LEVELS):
        from lora_lab.config import ConfigError

        raise ConfigError(f"data.levels={levels!r}: tiny-math has levels 1..5")
    return tuple(sorted(set(levels)))


def problems(seed: int, levels: tuple[int, ...] = LEVELS) -> Iterator[Problem]:
    r = random.Random(seed)
    while True:
        yield _GENERATORS[r.choice(levels)](r)


def _stream(seed: int, levels: tuple[int, ...], answer_format: str) -> Iterator[tuple[tuple, dict]]:
    coin = random.Random(seed + 1)  # its own stream: the schema choice never shifts the problems
    for p in problems(seed, levels):
        as_math = answer_format == "math" or (answer_format == "mixed" and coin.random() < 0.5)
        yield p.key, math_row(p) if as_math else gsm8k_row(p)


def load_tiny_math(cfg: "DataConfig", val_size: int = 0) -> tuple[list[dict], ...]:
    """(train, eval), or with val_size (RL's rl.val_size) (train, eval, val): the validation problems
    continue the held-out stream after the eval ones, keyed like them (tiny/common.py fixed_eval_split)."""
    levels = _check_levels(cfg.levels)
    return fixed_eval_split(lambda s: _stream(s, levels, cfg.answer_format), cfg.seed, require_size(cfg, "tiny-math"),
                            cfg.eval_size, "tiny-math", n_val=val_size)
