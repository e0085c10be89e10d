"""How many of the target tokens of each tiny post-training set the pretraining stream never
produces: the diagnosis behind the corpus's text skills (experiments/LOG.md, 2026-11-24).

A token that never occurs in pretraining has an untrained unembedding row that pretraining only
pushed down, so LoRA on the inner layers can hardly raise its logit; FullFT and an lm_head adapter
can. Counts are over the targets (assistant tokens) of each set's training split, against the
tokens of `--docs` pretraining documents (tiny-llama's stream, drill included).

    python experiments/token_coverage.py                       # the shipped tokenizer
    python experiments/token_coverage.py --tokenizer /tmp/assets/tokenizer
"""

from __future__ import annotations

import argparse
import collections

from transformers import AutoTokenizer

from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, load_data
from lora_lab.tiny.pretrain import BUILD_DEFAULTS, _render, pretrain_docs
from lora_lab.tiny.tokenizer import ASSETS

SETS = ("tiny-tulu", "tiny-openthoughts", "tiny-facts", "tiny-math")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default=str(ASSETS / "tokenizer"))
    p.add_argument("--docs", type=int, default=8000, help="pretraining documents to count (8000: ~0.6M tokens)")
    a = p.parse_args()
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    seen = collections.Counter(t for d in pretrain_docs(a.docs, 0, BUILD_DEFAULTS["tiny-llama"]["drill"])
                               for t in _render(tok, d))
    print(f"pretraining sample: {sum(seen.values()):,} tokens")
    print("| set | target tokens | never in pretraining | at most 10 times | most frequent of those never seen |")
    print("|---|---|---|---|---|")
    for name in SETS:
        train, _ = load_data(compose([f"data={name}"]), tok)
        targets = collections.Counter(int(t) for ids, labels in zip(train.ids, train.labels)
                                      for t, lab in zip(ids, labels) if lab != IGNORE_INDEX)
        total = sum(targets.values())
        never = sum(c for t, c in targets.items() if seen[t] == 0)
        rare = sum(c for t, c in targets.items() if seen[t] <= 10)
        top = [tok.convert_ids_to_tokens(t) for t, _ in sorted(targets.items(), key=lambda kv: -kv[1]) if seen[t] == 0][:6]
        print(f"| {name} | {total:,} | {never / total:.1%} | {rare / total:.1%} | {' '.join(map(repr, top))} |")


if __name__ == "__main__":
    main()
