"""tiny-facts: synthetic facts with an exactly known information content, for the capacity claim C9
("LoRA matches FullFT while it is not capacity-bound; ~2 bits per parameter").

A fact is one invented entity (a unique made-up name such as "Brouthaxel") with K = 3 attributes
whose values are drawn uniformly and independently from fixed vocabularies:

    colour  one of 16 colour words          log2(16)   = 4       bits
    city    one of 64 invented cities       log2(64)   = 6       bits
    number  an integer 0..999               log2(1000) = 9.9658  bits

A row is one entity in tulu's `messages` schema: three user/assistant turns, one per attribute, in
a random order, each question in one of three phrasings ("What is the colour of Brouthaxel?" ->
"Brouthaxel's colour is teal.").

Information content (what is counted): the entropy, under the generator, of the assistant turns
given the user turns, i.e. of what SFT trains on given what it conditions on. The name and the
question are in the prompt, so they carry nothing to be learned; each answer is a fixed template of
(name, attribute, value), injective in the value, so its entropy is that of the value; values are
uniform and independent across attributes and entities, and names are unique (no fact is asked
twice with different answers). Hence, for N = data.num_examples entities,

    I(N) = N * sum_k log2 |V_k| = N * (4 + 6 + log2 1000) = 19.9658 * N bits

(100 facts: 1,997 bits; 1,000: 19,966; 20,000: 399,316). Not counted: a constant, N-independent
overhead (the answer templates and the 64 city names themselves), which any model must also learn.
For scale: rank-r LoRA on all layers has r * sum(d_in + d_out) parameters over the adapted
matrices; for tiny-llama (as of this writing) that is 7,104 per rank, ~14 kbit at 2 bits per
parameter, i.e. ~710 facts for rank 1 and ~45k facts for rank 64; FullFT has ~1.1 M parameters
(~2.2 Mbit, ~109k facts).

Two eval splits, both fixed independently of num_examples:
- `tiny-facts` (use this for C9): the eval rows re-ask facts of the TRAINING set, the first
  min(eval_size, N) entities of the training stream (a uniform sample, since entities are i.i.d.;
  the batch order shuffles anyway), with a fourth phrasing per attribute that never occurs in
  training and the same answer template. The point of C9 is storing the facts, so the eval measures
  recall of stored facts, not generalisation to unseen ones; the held-out phrasing checks the model
  retrieves the fact rather than a memorised question string.
- `tiny-facts-heldout`: the usual held-out split, eval_size unseen entities. No model can beat
  chance on their values (log2 |V_k| bits each), so this eval calibrates the no-knowledge loss: the
  gap between its value-token loss and the re-ask loss is what was stored.
Both sets have the same training rows for the same seed. A tiny-facts run with
`data.eval_unseen=true` evaluates on both: the re-ask split as its eval (`eval_loss`) and the unseen
entities of tiny-facts-heldout (`eval_unseen_loss`, load_unseen_facts), so C9's no-knowledge loss
comes from the same run instead of a second FullFT run trained on the same rows.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from lora_lab.tiny.common import EVAL_SEED_OFFSET, invented_name, require_size

if TYPE_CHECKING:
    from lora_lab.config import DataConfig


@dataclass(frozen=True)
class Attribute:
    key: str
    values: tuple[str, ...]
    answer: str  # "{name}" and "{value}"; must be injective in the value (tested)
    train_questions: tuple[str, ...]
    eval_questions: tuple[str, ...]  # re-ask phrasing, never used in training


COLOURS = tuple("red blue green yellow orange purple pink brown black white grey teal gold silver violet maroon".split())
# 8 x 8 invented city names (not English words); _facts never uses one as an entity name.
CITIES = tuple(a + b for a in ("Vel", "Quor", "Brann", "Esk", "Tyl", "Morv", "Ost", "Harn")
               for b in ("port", "ford", "holm", "mere", "gard", "wick", "stead", "vale"))
NUMBERS = tuple(str(i) for i in range(1000))

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("colour", COLOURS, "{name}'s colour is {value}.",
              ("What is the colour of {name}?", "Which colour does {name} have?", "Tell me the colour of {name}."),
              ("I forgot the colour of {name}. Which one was it?",)),
    Attribute("city", CITIES, "{name} lives in {value}.",
              ("Which city does {name} live in?", "Where does {name} live?", "Tell me the home city of {name}."),
              ("In which town is the home of {name}?",)),
    Attribute("number", NUMBERS, "{name}'s number is {value}.",
              ("What is the number of {name}?", "Which number belongs to {name}?", "Tell me the number of {name}."),
              ("I forgot the number of {name}. Which one was it?",)),
)


@dataclass(frozen=True)
class Fact:
    name: str
    values: tuple[int, ...]  # index into ATTRIBUTES[k].values
    order: tuple[int, ...]  # order in which the attributes are asked
    phrasing: tuple[int, ...]  # train question index per attribute


def bits_per_fact(attributes: tuple[Attribute, ...] = ATTRIBUTES) -> float:
    """Entropy of one entity's answers given its questions: sum_k log2 |V_k| (19.9658 bits)."""
    return sum(math.log2(len(a.values)) for a in attributes)


def facts_information_bits(cfg: "DataConfig") -> float:
    """Information content of the training set of tiny-facts: num_examples * bits_per_fact()."""
    return require_size(cfg, "tiny-facts") * bits_per_fact()


def _facts(seed: int, banned: frozenset[str] = frozenset(), attributes: tuple[Attribute, ...] = ATTRIBUTES) -> Iterator[Fact]:
    """An endless stream of facts with unique names; a name already used (or banned) is redrawn
    together with its values, so the values of the kept facts stay i.i.d. uniform."""
    r = random.Random(seed)
    seen = set(banned) | set(CITIES)
    k = len(attributes)
    while True:
        name = invented_name(r)
        values = tuple(r.randrange(len(a.values)) for a in attributes)
        order = tuple(r.sample(range(k), k))
        phrasing = tuple(r.randrange(len(a.train_questions)) for a in attributes)
        if name in seen:
            continue
        seen.add(name)
        yield Fact(name, values, order, phrasing)


def fact_messages(fact: Fact, reask: bool = False, attributes: tuple[Attribute, ...] = ATTRIBUTES) -> list[dict]:
    msgs = []
    for k in fact.order:
        a = attributes[k]
        q = a.eval_questions[0] if reask else a.train_questions[fact.phrasing[k]]
        msgs += [{"role": "user", "content": q.format(name=fact.name)},
                 {"role": "assistant", "content": a.answer.format(name=fact.name, value=a.values[fact.values[k]])}]
    return msgs


def _row(fact: Fact, rid: str, reask: bool = False) -> dict:
    return {"id": rid, "source": "tiny-facts", "messages": fact_messages(fact, reask)}


def _split_facts(cfg: "DataConfig") -> tuple[list[Fact], list[Fact]]:
    n = require_size(cfg, "tiny-facts")
    held = list(itertools.islice(_facts(cfg.seed + EVAL_SEED_OFFSET), cfg.eval_size))
    train = list(itertools.islice(_facts(cfg.seed, frozenset(f.name for f in held)), n))
    return train, held


def facts_table(cfg: "DataConfig") -> list[dict[str, str]]:
    """The training facts as {"name", "colour", "city", "number"} (for exact-recall scoring)."""
    train, _ = _split_facts(cfg)
    return [{"name": f.name, **{a.key: a.values[v] for a, v in zip(ATTRIBUTES, f.values)}} for f in train]


def load_tiny_facts(cfg: "DataConfig") -> tuple[list[dict], list[dict]]:
    """C9's split: eval re-asks the first min(eval_size, N) training facts with a held-out phrasing."""
    train, _ = _split_facts(cfg)
    rows = [_row(f, f"tiny_facts_{cfg.seed}_{i}") for i, f in enumerate(train)]
    reask = [_row(f, f"tiny_facts_{cfg.seed}_{i}_reask", reask=True) for i, f in enumerate(train[: cfg.eval_size])]
    return rows, reask


def _unseen_rows(cfg: "DataConfig", held: list[Fact]) -> list[dict]:
    return [_row(f, f"tiny_facts_{cfg.seed}_heldout_{i}") for i, f in enumerate(held)]


def load_tiny_facts_heldout(cfg: "DataConfig") -> tuple[list[dict], list[dict]]:
    """Same training rows; eval: eval_size unseen entities (the chance-level baseline)."""
    train, held = _split_facts(cfg)
    rows = [_row(f, f"tiny_facts_{cfg.seed}_{i}") for i, f in enumerate(train)]
    return rows, _unseen_rows(cfg, held)


def load_unseen_facts(cfg: "DataConfig") -> list[dict]:
    """The eval_size unseen entities that tiny-facts-heldout evaluates on (data.eval_unseen), for a
    run that trains on tiny-facts: its no-knowledge loss, measured on the run's own model."""
    _, held = _split_facts(cfg)
    return _unseen_rows(cfg, held)
