"""Helpers shared by the generated data sets (tiny/world.py, tiny/facts.py, tiny/maths.py,
tiny/thoughts.py): invented names, the fixed held-out split, and the size check.

Kept apart from tiny/world.py so that the generator modules can import them while tiny/world.py
imports the generators for its registry (no import cycle).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable, Hashable, Iterator

if TYPE_CHECKING:
    from lora_lab.config import DataConfig

# Offset of the held-out stream's seed (tiny-tulu's convention): a prime, far from seeds people use.
EVAL_SEED_OFFSET = 7919

# Syllables of invented names. Deliberately unlike the pretraining corpus's names (Anna, Ben, ...)
# and unlike English words, so a name carries no prior knowledge into post-training.
_ONSETS = ("b d f g k l m n p r s t v z br dr gr kr tr bl gl kl pl sk st th sh ch zh qu").split()
_VOWELS = ("a e i o u y ae ei ou oa").split()
_CODAS = ("", "", "", "n", "r", "l", "s", "x", "k", "m", "th", "nd")


def syllable(r: random.Random) -> str:
    return r.choice(_ONSETS) + r.choice(_VOWELS) + r.choice(_CODAS)


def invented_name(r: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A capitalised made-up name of 2-3 syllables (~3e3 syllables, so ~1e7 two-syllable names)."""
    return "".join(syllable(r) for _ in range(r.randint(*syllables))).capitalize()


def invented_word(r: random.Random) -> str:
    """A lower-case made-up word of 2 syllables (string puzzles and code traces)."""
    return syllable(r) + syllable(r)


def require_size(cfg: "DataConfig", name: str) -> int:
    """data.num_examples of a generated set: a number is required (null means 'all' of a real set)."""
    if cfg.num_examples is None:
        from lora_lab.config import ConfigError

        raise ConfigError(f"data.num_examples=None: {name} is generated and needs a number of examples")
    return cfg.num_examples


def take_fresh(stream: Iterator[tuple[Hashable, dict]], banned: set, n: int, what: str, unique: bool = False,
               lower: str = "data.eval_size") -> list[dict]:
    """The first n rows of a (key, row) stream whose key is not banned (the held-out keys); with
    `unique`, not one taken already either.

    Fails loudly instead of looping forever when the stream has (almost) nothing new left,
    e.g. a single easy level whose few problems the held-out split has used up (`lower`: the key
    to lower then)."""
    out: list[dict] = []
    banned = set(banned) if unique else banned
    misses = 0
    for key, row in stream:
        if key in banned:
            misses += 1
            if misses > 1000 + 100 * n:
                raise ValueError(f"{what}: the generator keeps repeating held-out items; lower {lower} or widen the set")
            continue
        if unique:
            banned.add(key)
        out.append(row)
        if len(out) == n:
            break
    return out


def fixed_eval_split(stream: Callable[[int], Iterator[tuple[Hashable, dict]]], seed: int, n_train: int, n_eval: int,
                     what: str, n_val: int = 0) -> tuple[list[dict], ...]:
    """(train, eval), or with n_val (train, eval, val): eval is the first n_eval rows of its own
    stream (seed + EVAL_SEED_OFFSET), fixed first; val (RL's rl.val_size) the next n_val rows of that
    stream with keys neither held out for eval nor repeated; train is the prefix of the main stream
    without rows whose key is held out (eval or val). So num_examples and n_val never change the
    eval set, and a smaller train set is a prefix of a larger one."""
    held: list[tuple[Hashable, dict]] = []
    held_stream = stream(seed + EVAL_SEED_OFFSET)
    for item in held_stream:
        held.append(item)
        if len(held) == n_eval:
            break
    banned = {k for k, _ in held}
    if not n_val:
        train = take_fresh(stream(seed), banned, n_train, what)
        return train, [row for _, row in held]
    keyed = ((k, (k, row)) for k, row in held_stream)  # the same stream, continued after the eval rows
    val = take_fresh(keyed, banned, n_val, what, unique=True, lower="rl.val_size")
    train = take_fresh(stream(seed), banned | {k for k, _ in val}, n_train, what)
    return train, [row for _, row in held], [row for _, row in val]
