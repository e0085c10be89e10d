"""How much of tiny-facts' information a finished run stored: for each attribute of a fact, every
candidate value (16 colours, 64 cities, 1000 numbers) is scored in the answer template after a
single-turn question, and the model's distribution over the candidates gives the value's NLL and
top-1 recall. Chance minus NLL, in bits, is what the model knows of the value; summed over the
three attributes it is comparable with the 19.97 bits a fact holds (lora_lab/tiny/facts.py).

The eval loss that training logs averages over every answer token (the entity's name and the
template too, which dominate it), so it cannot say this by itself; this is the check behind the
epochs of experiments/tiny/capacity.yaml (experiments/LOG.md, 2026-11-29). Three sets of questions:
training facts re-asked in the phrasing never trained on (what C9's eval asks), training facts in
their training phrasing, and unseen facts (no knowledge; a NLL above chance is overconfidence).

    python experiments/facts_recall.py runs/tiny/capacity/<run_id>      # ~3 minutes on one core
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_lab.config import load_config
from lora_lab.data import use_chat_template
from lora_lab.learner import _load_named, build_learner
from lora_lab.models import load_tokenizer
from lora_lab.tiny.facts import ATTRIBUTES, _split_facts


def value_nll(model, tok, fact, k: int, reask: bool, batch: int) -> tuple[float, bool]:
    """NLL (nats) of the fact's true value among all candidates of attribute k, and whether it is the top one."""
    a = ATTRIBUTES[k]
    q = (a.eval_questions[0] if reask else a.train_questions[fact.phrasing[k]]).format(name=fact.name)
    prompt = tok(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
                 add_special_tokens=False)["input_ids"]
    answers = [tok(a.answer.format(name=fact.name, value=v), add_special_tokens=False)["input_ids"] for v in a.values]
    totals = []
    for i in range(0, len(answers), batch):
        seqs = [prompt + ans for ans in answers[i:i + batch]]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=ids).logits.float()[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        totals += [logp[j, len(prompt) - 1:len(s) - 1].sum() for j, s in enumerate(seqs)]
    post = F.log_softmax(torch.stack(totals), 0)
    return -float(post[fact.values[k]]), int(post.argmax()) == fact.values[k]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a completed tiny-facts run directory (its final checkpoint is read)")
    p.add_argument("--facts", type=int, default=32, help="facts per set of questions (~1 minute each on one core)")
    p.add_argument("--batch", type=int, default=250, help="candidate answers per forward")
    args = p.parse_args()
    cfg = load_config(args.run / "config.yaml")
    model = build_learner(cfg).model
    state = torch.load(args.run / "checkpoint" / "state.pt", weights_only=True)
    model.load_state_dict(state["trainable"]) if cfg.method == "full" else _load_named(model, state["trainable"])
    model.eval()
    tok = use_chat_template(load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision), cfg.data)
    train, unseen = _split_facts(cfg.data)
    for label, facts, reask in (("re-asked training facts", train, True), ("training facts, training phrasing", train, False),
                                ("unseen facts", unseen, False)):
        parts, known = [], 0.0
        for k, a in enumerate(ATTRIBUTES):
            scored = [value_nll(model, tok, f, k, reask, args.batch) for f in facts[:args.facts]]
            nll = sum(s[0] for s in scored) / len(scored)
            chance = math.log(len(a.values))
            known += (chance - nll) / math.log(2)
            parts.append(f"{a.key} NLL {nll:.2f} (chance {chance:.2f}), recall {sum(s[1] for s in scored) / len(scored):.0%}")
        print(f"{label}: {'; '.join(parts)}; known {known:.1f} of {sum(math.log2(len(a.values)) for a in ATTRIBUTES):.2f} bits per fact")


if __name__ == "__main__":
    main()
