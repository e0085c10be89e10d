"""Rewards: right answers score 1, near misses 0, for every task and answer form."""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from lora_lab.answers import last_boxed, numbers, reference_answer
from lora_lab.rewards import TASKS, reference_for, reward_task, score
from lora_lab.tiny.maths import gsm8k_row, math_row, problems

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize("completion, reference, expected", [
    # GSM8K: the number after #### in the reference, the last number of the completion.
    ("She has 3 + 4 = 7 apples.\n#### 7", "3 + 4 = <<3+4=7>>7\n#### 7", 1.0),
    ("The answer is 72", "#### 72", 1.0),
    ("So she pays $1,250.00 in total.", "#### 1250", 1.0),
    ("It costs $18.", "#### 18", 1.0),
    ("He walks 12 km.", "#### 12", 1.0),
    ("The answer is 1,000,000", "#### 1000000", 1.0),
    ("The temperature is -3 degrees.", "#### -3", 1.0),
    ("The temperature is \u22123 degrees.", "#### -3", 1.0),
    ("#### 5\n", "#### 5", 1.0),
    ("0.5 of them, so 5.0", "#### 5", 1.0),
    ("The reference may have commas too: 1234", "#### 1,234", 1.0),
    # near misses
    ("The answer is 720", "#### 72", 0.0),
    ("The answer is 7.2", "#### 72", 0.0),
    ("The answer is 3", "#### -3", 0.0),
    ("The answer is -72", "#### 72", 0.0),
    ("72 apples, then 5 are eaten", "#### 72", 0.0),  # the last number counts, not the first
    ("seventy-two", "#### 72", 0.0),
    ("", "#### 72", 0.0),
    ("1,2345", "#### 12345", 0.0),  # not a thousands separator: two numbers
    ("x72", "#### 72", 0.0),  # part of a name, not a number
])
def test_gsm8k(completion, reference, expected):
    assert score("gsm8k", completion, reference) == expected


@pytest.mark.parametrize("completion, reference, expected", [
    ("First multiply: $3 \\times 4 = 12$. The answer is $\\boxed{12}$.", "12", 1.0),
    ("7 \\times 8 = 56 = <<7*8=56>>56\n#### 56", "56", 1.0),
    ("6 + 2 = 8.", "8", 1.0),  # the base model's short form: the last number
    ("$x = \\boxed{-7}$", "-7", 1.0),
    ("\\boxed{12} is wrong, the answer is \\boxed{13}", "13", 1.0),  # the last box counts
    ("The answer is \\boxed{12}, not 13.", "12", 1.0),  # a box wins over later numbers
    # near misses
    ("The answer is $\\boxed{13}$.", "12", 0.0),
    ("The answer is $\\boxed{7}$.", "-7", 0.0),
    ("The answer is $\\boxed{3 + 4 = 7}$.", "7", 0.0),  # a box holds the answer alone
    ("The answer is $\\boxed{}$. 12", "12", 0.0),
    ("#### 12 or 13", "12", 0.0),
    ("6 + 2 = 8. Then 9", "8", 0.0),
    ("no digits here", "8", 0.0),
    ("\\boxed{1", "1", 1.0),  # an unclosed box is no box: the last number
])
def test_tiny_math(completion, reference, expected):
    assert score("tiny-math", completion, reference) == expected


@pytest.mark.parametrize("completion, reference, expected", [
    ("so $\\boxed{\\frac{1}{2}}$", "The answer is $\\boxed{\\frac12}$.", 1.0),
    ("so $\\boxed{0.5}$", "$\\boxed{\\frac{1}{2}}$", 1.0),
    ("$\\boxed{\\sqrt{2}/2}$", "$\\boxed{\\frac{\\sqrt{2}}{2}}$", 1.0),
    ("$\\boxed{2\\sqrt{3}}$", "$\\boxed{\\sqrt{12}}$", 1.0),
    ("$\\boxed{(x+1)^2}$", "$\\boxed{x^2+2x+1}$", 1.0),
    ("$\\boxed{x = 3}$", "$\\boxed{3}$", 1.0),
    ("$\\boxed{\\{2, 1\\}}$", "$\\boxed{\\{1, 2\\}}$", 1.0),
    ("$\\boxed{b + a}$", "$\\boxed{a+b}$", 1.0),
    ("$\\boxed{\\dfrac{3}{4}}$", "$\\boxed{\\frac{3}{4}}$", 1.0),
    ("$\\boxed{\\text{(A)}}$", "$\\boxed{A}$", 1.0),
    ("$\\boxed{1}$ then $\\boxed{\\frac{1}{2}}$", "\\boxed{\\frac{1}{2}}", 1.0),
    # near misses
    ("$\\boxed{\\frac{1}{3}}$", "$\\boxed{\\frac{1}{2}}$", 0.0),
    ("$\\boxed{0.33}$", "$\\boxed{\\frac{1}{3}}$", 0.0),
    ("$\\boxed{(2, 1)}$", "$\\boxed{(1, 2)}$", 0.0),  # ordered pairs keep their order
    ("$\\boxed{[1, 2)}$", "$\\boxed{(1, 2)}$", 0.0),  # open and half-open intervals differ
    ("$\\boxed{-2}$", "$\\boxed{2}$", 0.0),
    ("$\\boxed{3.14}$", "$\\boxed{\\pi}$", 0.0),
    ("$\\boxed{-\\infty}$", "$\\boxed{\\infty}$", 0.0),
    ("$\\boxed{\\frac{\\sqrt{3}}{2}}$", "$\\boxed{\\frac{\\sqrt{2}}{2}}$", 0.0),
    ("the answer is 1/2", "$\\boxed{\\frac{1}{2}}$", 0.0),  # no box: no answer
    ("$\\boxed{}$", "$\\boxed{0}$", 0.0),
    ("$\\boxed{\\frac{1}{2}}$ and finally $\\boxed{1}$", "\\boxed{\\frac{1}{2}}", 0.0),
])
def test_math(completion, reference, expected):
    assert score("math", completion, reference) == expected


@pytest.mark.parametrize("completion, final_answer, expected", [
    ("... so the limit is $\\boxed{e^2}$.", "e^{2}", 1.0),
    ("$\\boxed{\\frac{\\pi}{4}}$", "\\dfrac{\\pi}{4}", 1.0),
    ("$\\boxed{1}$", "1", 1.0),
    ("$\\boxed{e}$", "e^{2}", 0.0),
    ("$\\boxed{\\frac{\\pi}{2}}$", "\\frac{\\pi}{4}", 0.0),
    ("The answer is 1", "1", 0.0),
])
def test_deepmath(completion, final_answer, expected):
    assert score("deepmath", completion, final_answer) == expected


def test_references_of_every_schema_score_their_own_solution():
    """A data row's own worked solution is a correct completion; another row's is not (checked on
    generated tiny-math rows in both schemas and on the real-schema fixtures)."""
    gen = problems(3)
    ps = [next(gen) for _ in range(40)]
    for p, q in zip(ps, ps[1:]):
        for make in (gsm8k_row, math_row):
            row, other = make(p), make(q)
            ref = reference_for("tiny-math", row)
            assert ref == reference_answer(row) == str(p.answer)
            text = row.get("answer") or row["solution"]
            assert score("tiny-math", text, ref) == 1.0
            if q.answer != p.answer:
                assert score("tiny-math", other.get("answer") or other["solution"], ref) == 0.0
    for task, key in (("gsm8k", "answer"), ("math", "solution"), ("deepmath", "r1_solution_1")):
        rows = [json.loads(line) for line in (FIXTURES / f"{task}.jsonl").read_text().splitlines()]
        rows = [r for r in rows if task == "gsm8k" or last_boxed(r.get(key) or "") is not None][:5]
        assert rows, task
        for r in rows:
            assert score(task, r[key], reference_for(task, r)) == 1.0, r[key][-80:]


def test_numbers_and_boxes():
    assert numbers("pays $1,250.00, gets 3, 4 back; -7 and \u22122.5") == [1250, 3, 4, -7, Fraction(-5, 2)]
    assert last_boxed("\\boxed{1} and \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert last_boxed("\\fbox{x}") == "x" and last_boxed("\\boxed{") is None and last_boxed("none") is None


def test_bad_task_and_reference_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown reward task 'mbpp'"):
        score("mbpp", "1", "1")
    with pytest.raises(ValueError, match="no single numeric answer"):
        score("gsm8k", "1", "#### many")
    with pytest.raises(ValueError, match="data.name='tiny-tulu' has no verifiable reward"):
        reward_task("tiny-tulu")
    assert [reward_task(t) for t in TASKS] == list(TASKS)
