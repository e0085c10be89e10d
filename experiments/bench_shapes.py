"""Step time of candidate tiny-model shapes on real tiny-tulu steps: the measurement behind the
sizes of tiny-llama and tiny-moe (experiments/LOG.md, 2026-11-24).

Each shape is built from its preset's config with random weights and LoRA rank 8 on all layers;
a step is what lora_lab.train does (32 sequences, sorted micro-batches of 8, loss on target
positions only, AdamW). The shapes take turns on the same batches, so drift in machine load hits
all alike; median over steps 2..N.

    python experiments/bench_shapes.py --steps 12
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, order_seed
from lora_lab.lora import apply_lora
from lora_lab.models import load_tokenizer
from lora_lab.tiny.presets import tiny_config
from lora_lab.train import batch_nll

# (preset, hidden, layers, MLP or expert width, query heads, kv heads); head_dim 32 throughout.
SHAPES = [("tiny-llama", 160, 4, 448, 5, 1), ("tiny-llama", 128, 4, 256, 4, 1), ("tiny-llama", 128, 3, 384, 4, 1),
          ("tiny-moe", 128, 4, 128, 4, 2), ("tiny-moe", 128, 3, 128, 4, 2)]


def build(tok, lora_cfg, preset, hidden, layers, width, heads, kv):
    width_key = "moe_intermediate_size" if preset == "tiny-moe" else "intermediate_size"
    conf = tiny_config(preset, len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=kv, head_dim=32, **{width_key: width})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(conf)
    apply_lora(model, lora_cfg)
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    a = p.parse_args()
    cfg = compose(["optim.lr=3e-3"])
    tok = load_tokenizer("tiny-llama")
    train_split, _ = load_data(cfg, tok)
    order = BatchOrder(len(train_split), 32, order_seed(cfg))
    models = [build(tok, cfg.lora, *shape) for shape in SHAPES]
    times: list[list[float]] = [[] for _ in SHAPES]
    for step in range(a.steps):
        idx = sorted(order.batch(step), key=lambda i: len(train_split.ids[i]))
        mbs = [collate(train_split, idx[i:i + 8], tok.pad_token_id) for i in range(0, 32, 8)]
        n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in mbs)
        for k, (model, opt) in enumerate(models):
            t = time.perf_counter()
            for b in mbs:
                nll, _ = batch_nll(model, b)
                (nll / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[k].append(time.perf_counter() - t)
    base = statistics.median(times[0][2:])
    for shape, (model, _), ts in zip(SHAPES, models, times):
        m = statistics.median(ts[2:])
        params = sum(q.numel() for q in model.parameters() if not q.requires_grad)
        print(f"{shape[0]:<10} hidden {shape[1]:<4} layers {shape[2]} width {shape[3]:<4} heads {shape[4]}/{shape[5]} "
              f"params {params:>9,}  step {m * 1000:4.0f} ms  ratio {m / base:.2f}")


if __name__ == "__main__":
    main()
