"""Accuracy of a model on a math set's held-out problems, by greedy decoding: how much a base
model solves before any post-training (tiny-math is sized so that tiny-llama solves some).

The prompt is the problem as a user turn (chat template, generation prompt on); a completion is
scored by the RL reward of the data set (lora_lab/rewards.py, which reads answers by the rules of
lora_lab/answers.py), so this count and RL's eval_accuracy of the base model use the same rule.

    python analysis/base_accuracy.py model=tiny-llama data=tiny-math data.eval_size=200
    python analysis/base_accuracy.py model=tiny-llama data=tiny-math data.levels=[1,2] --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import collections
import json
import sys

import torch

from lora_lab import answers
from lora_lab.config import ConfigError, compose
from lora_lab.data import DATASETS, _messages, use_chat_template
from lora_lab.models import build_model
from lora_lab.rewards import reference_for, reward_task, score


def judged(task: str, row: dict, completion: str) -> dict:
    """One held-out problem, scored as RL scores it."""
    ref = reference_for(task, row)
    final = answers.final_number(completion)
    return {"level": row.get("level") or "gsm8k-form", "reference": ref,
            "answer": None if final is None else str(final), "correct": score(task, completion, ref) == 1.0,
            "completion": completion}


@torch.no_grad()
def accuracy(model, tok, rows: list[dict], max_new_tokens: int, task: str, batch: int = 32) -> list[dict]:
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
            out.append(judged(task, r, tok.decode(g, skip_special_tokens=True)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="lora-lab config overrides (model=..., data=...)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--show", type=int, default=3, help="print this many completions")
    a = p.parse_args(argv)
    if a.max_new_tokens <= 0:
        p.error(f"--max-new-tokens={a.max_new_tokens}: must be > 0")
    try:
        cfg = compose(a.overrides)
        task = reward_task(cfg.data.name)
    except (ConfigError, ValueError) as exc:
        p.exit(2, f"{p.prog}: {exc}\n")
    model, tok = build_model(cfg.model)
    use_chat_template(tok, cfg.data)
    model.eval()
    _, held_out = DATASETS[cfg.data.name](cfg.data)
    results = accuracy(model, tok, list(held_out), a.max_new_tokens, task)
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
