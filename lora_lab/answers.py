"""Answer formats of math data, in one place: `\\boxed{...}` (MATH, DeepMath), a last line
`#### 42` (GSM8K), and plain numbers as people write them.

Used by the data loaders (is a row's answer where its schema says?), the tiny-math generator and
its reference answers, the RL rewards (lora_lab/rewards.py) and the base-model accuracy
(analysis/base_accuracy.py), so that every count of "solved" reads an answer by the same rules:

    final answer of a completion   its last \\boxed{...}; else what follows its last "####";
                                   else its last number
    reference answer of a row      the text after "####" (GSM8K schema), else the last \\boxed{...}
                                   of the solution (MATH schema)

Numbers compare as exact rationals after removing thousands separators, a leading currency sign and
trailing units or a sentence's full stop ("$1,250.00 in total." is 1250).

    python -m lora_lab.answers 'So she pays $1,250.'        # prints 1250
"""

from __future__ import annotations

import re
import sys
from fractions import Fraction

# A number as people write it: optional sign (ASCII or Unicode minus), optional currency sign,
# digits with comma-separated thousands or plain, optional decimals. "1,000" is one number,
# "3, 4" two; a full stop that ends a sentence is not a decimal point.
NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)(?:\$\s?)?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?!\d)")
# MATH's answer format: the final answer inside \boxed{...} (a few MATH solutions use \fbox).
BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
# GSM8K's answer format: the worked solution, then a last line "#### 72" that graders parse.
GSM8K_FINAL = re.compile(r"####\s*-?[\d,]*\.?\d+\s*$")


def numbers(text: str) -> list[Fraction]:
    """Every number in `text`, in order, as an exact rational."""
    out = []
    for sign, digits, decimals in NUMBER.findall(text):
        value = Fraction(digits.replace(",", "") + (decimals or ""))
        out.append(-value if sign else value)
    return out


def single_number(text: str) -> Fraction | None:
    """`text` as one number ("42", "-7", "1,000", "$3.50", "12 kg"), or None."""
    found = numbers(text)
    return found[-1] if len(found) == 1 else None


def last_number(text: str) -> Fraction | None:
    found = numbers(text)
    return found[-1] if found else None


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...} (nested braces allowed), or None."""
    starts = [m.end() for m in BOXED.finditer(text)]
    if not starts:
        return None
    depth = 1
    for j in range(starts[-1], len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[starts[-1]:j]
    return None


def after_hashes(text: str) -> str | None:
    """The text after the last "####" (GSM8K's final-answer marker), or None."""
    return text.rsplit("####", 1)[1] if "####" in text else None


def final_number(completion: str) -> Fraction | None:
    """The number a completion gives as its final answer: its last \\boxed{...} (one number in it);
    else the first line after its last "####"; else its last number."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return single_number(boxed)
    tail = after_hashes(completion)
    if tail is not None:
        return single_number(tail.strip().split("\n", 1)[0])
    return last_number(completion)


def reference_answer(row: dict) -> str:
    """The exact answer string of a GSM8K-schema ("#### 42") or MATH-schema ("\\boxed{42}") row."""
    tail = after_hashes(row["answer"]) if isinstance(row.get("answer"), str) else None
    if tail is not None:
        return tail.strip().replace(",", "")
    if "solution" in row:
        boxed = last_boxed(row["solution"])
        if boxed is not None:
            return boxed.strip()
    raise ValueError(f"row has no '#### answer' nor '\\boxed{{}}' answer: keys {sorted(row)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m lora_lab.answers COMPLETION")
    print(final_number(sys.argv[1]))
