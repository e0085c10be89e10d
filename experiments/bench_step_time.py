"""Median training-step time of Llama shapes, LoRA (rank 8, all layers) vs FullFT, on random
tokens: the measurement behind the size of tiny-llama (experiments/LOG.md, 2026-11-23).

    python experiments/bench_step_time.py            # batch 32 x 48 tokens, 8 steps, median of the last 6
"""

import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lora_lab.config import LoraConfig
from lora_lab.lora import apply_lora

SHAPES = [(192, 4, 512, 6, 2), (160, 4, 448, 5, 1), (128, 4, 384, 4, 2), (128, 6, 384, 4, 2), (96, 4, 256, 4, 2)]


def bench(hidden, layers, inter, heads, kv, method, vocab=1878, seq=48, batch=32, steps=8) -> tuple[int, float]:
    torch.manual_seed(0)
    conf = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
                                tie_word_embeddings=False, max_position_embeddings=1024)
    model = AutoModelForCausalLM.from_config(conf)
    n = sum(p.numel() for p in model.parameters())
    if method == "lora":
        apply_lora(model, LoraConfig(rank=8))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq))
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t)
    return n, statistics.median(times[2:])


if __name__ == "__main__":
    for shape in SHAPES:
        for method in ("lora", "full"):
            n, t = bench(*shape, method)
            print(f"{shape} {method:4} params={n:,} step={t * 1000:.0f} ms")
