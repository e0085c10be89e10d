"""Verifiable rewards for RL: `score(task, completion, reference) -> float`, 1.0 correct, 0.0 not.

    task        reference                                     the completion's answer
    tiny-math   the exact answer (answers.reference_answer)   its last \\boxed{...}; else the number after
                                                              its last "####"; else its last number
    gsm8k       a GSM8K answer ending "#### 42" (or "42")     its last number
    math        a MATH solution with \\boxed{...} (or the       its last \\boxed{...}, checked for mathematical
                bare answer)                                  equivalence with math-verify
    deepmath    DeepMath's final_answer (or a \\boxed{...})     as for math

Answers are read by lora_lab/answers.py, the one owner of answer formats: numbers compare as exact
rationals after removing thousands separators, a leading currency sign and trailing units or a
sentence's full stop ("$1,250.00 in total." is 1250). A completion with no answer scores 0. The reward is binary: the paper's RL experiments reward correctness only.

`reference_for(task, row)` gives the reference string of a data row of the task's schema, and
`reward_task(data_name)` the reward task of a data set preset.

    python -m lora_lab.rewards gsm8k 'So she pays $1,250.' '#### 1250'      # prints 1.0
"""

from __future__ import annotations

import sys
import threading
from fractions import Fraction
from functools import lru_cache

from lora_lab import answers

TASKS = ("tiny-math", "gsm8k", "math", "deepmath")

def reward_task(data_name: str) -> str:
    """The reward task of a data set preset (data.name); raises ValueError if it has none."""
    if data_name not in TASKS:
        raise ValueError(f"data.name={data_name!r} has no verifiable reward; RL needs one of {', '.join(TASKS)}")
    return data_name


def reference_for(task: str, row: dict) -> str:
    """The reference string `score` compares against, from one row of the task's schema."""
    if task == "tiny-math":
        return answers.reference_answer(row)
    if task == "gsm8k":
        return row["answer"]
    if task == "math":
        return row["solution"]
    if task == "deepmath":
        return str(row["final_answer"])
    raise ValueError(f"unknown reward task {task!r}; choose one of {', '.join(TASKS)}")


def _gsm8k_reference(reference: str) -> Fraction | None:
    tail = answers.after_hashes(reference)
    return answers.single_number(reference if tail is None else tail)


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which works only in the main thread; elsewhere (a reward
    # worker thread) it must run without a timeout.
    return 5 if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=4096)
def _parse_gold(answer: str):
    from math_verify import parse

    return parse(f"\\boxed{{{answer}}}", parsing_timeout=_timeout())


def _math_equivalent(reference_answer: str, completion: str) -> bool:
    from math_verify import parse, verify

    predicted = answers.last_boxed(completion)
    if predicted is None or not predicted.strip():
        return False
    gold = _parse_gold(reference_answer.strip())
    pred = parse(f"\\boxed{{{predicted}}}", parsing_timeout=_timeout())
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=_timeout()))


def score(task: str, completion: str, reference: str) -> float:
    """1.0 if the completion's final answer equals the reference's, else 0.0 (see the module doc)."""
    if task == "tiny-math":
        want, got = answers.single_number(reference), answers.final_number(completion)
    elif task == "gsm8k":
        want, got = _gsm8k_reference(reference), answers.last_number(completion)
    elif task in ("math", "deepmath"):
        boxed = answers.last_boxed(reference)
        return float(_math_equivalent(boxed if boxed is not None else reference, completion))
    else:
        raise ValueError(f"unknown reward task {task!r}; choose one of {', '.join(TASKS)}")
    if want is None:
        raise ValueError(f"{task} reference {reference[-60:]!r} has no single numeric answer")
    return float(got is not None and got == want)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: python -m lora_lab.rewards TASK COMPLETION REFERENCE")
    print(score(*sys.argv[1:]))
