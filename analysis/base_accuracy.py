"""Accuracy of a model on a math set's held-out problems, by greedy decoding: how much a base
model solves before any post-training (tiny-math is sized so that tiny-llama solves some).

The prompt is the problem as a user turn (chat template, generation prompt on); the completion's
answer is its last \\boxed{...} if it has one, else its last integer, compared with the reference
answer exactly. (RL rewards with math-verify come with lora_lab/rewards.py.)

    python analysis/base_accuracy.py model=tiny-llama data=tiny-math data.eval_size=200
    python analysis/base_accuracy.py model=tiny-llama data=tiny-math data.levels=[1,2] --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys

import torch

from lora_lab.config import compose
from lora_lab.data import DATASETS, _messages
from lora_lab.models import build_model
from lora_lab.tiny.maths import last_boxed, reference_answer

_INT = re.compile(r"-?\d[\d,]*")


def extract(completion: str) -> str | None:
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed.replace(",", "").strip()
    nums = _INT.findall(completion)
    return nums[-1].replace(",", "") if nums else None


@torch.no_grad()
def accuracy(model, tok, rows: list[dict], max_new_tokens: int, batch: int = 32) -> list[dict]:
    tok.padding_side = "left"
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        prompts = [[m for m in _messages(r) if m["role"] != "assistant"] for r in chunk]
        enc = tok.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True,
                                      padding=True, return_tensors="pt")
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        for r, g in zip(chunk, gen[:, enc["input_ids"].shape[1]:]):
            text = tok.decode(g, skip_special_tokens=True)
            ref = reference_answer(r)
            out.append({"level": r.get("level") or "gsm8k-form", "reference": ref, "answer": extract(text),
                        "correct": extract(text) == ref, "completion": text})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="lora-lab config overrides (model=..., data=...)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--show", type=int, default=3, help="print this many completions")
    a = p.parse_args(argv)
    if a.max_new_tokens <= 0:
        p.error(f"--max-new-tokens={a.max_new_tokens}: must be > 0")
    cfg = compose(a.overrides)
    model, tok = build_model(cfg.model)
    model.eval()
    _, held_out = DATASETS[cfg.data.name](cfg.data)
    results = accuracy(model, tok, list(held_out), a.max_new_tokens)
    by_level = collections.defaultdict(list)
    for r in results:
        by_level[r["level"]].append(r["correct"])
    for r in results[: a.show]:
        print(json.dumps({k: r[k] for k in ("reference", "answer", "completion")}), file=sys.stderr)
    for level in sorted(by_level):
        v = by_level[level]
        print(f"{level:<12} {sum(v):>4}/{len(v):<4} {100 * sum(v) / len(v):5.1f}%")
    total = [r["correct"] for r in results]
    print(f"{'all':<12} {sum(total):>4}/{len(total):<4} {100 * sum(total) / len(total):5.1f}%  ({cfg.model.name}, {cfg.data.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
