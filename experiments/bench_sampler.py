"""RL sampling time: the cached decoding loop (rl.sampler=cache) against transformers' generate
(rl.sampler=generate), interleaved in one process on the same batches.

tiny-llama, tiny-math levels 1-2 (the tiny/rl problems), `--prompts` problems x `--n` samples a
call, up to `--max-new-tokens` tokens at `--temperature`, one CPU thread (as a sweep worker runs).
Each round samples the next batch of problems with both samplers, in alternating order; the table
gives the median seconds per call over the rounds and the ratio of medians.

    python experiments/bench_sampler.py
    python experiments/bench_sampler.py --rounds 20 --prompts 16 --n 8 --max-new-tokens 32 --temperature 0.7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lora_lab.config import compose
from lora_lab.data import load_rows
from lora_lab.models import build_model
from lora_lab.rl import encode_prompt
from lora_lab.sampler import SAMPLERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg = compose(["task=rl", "data=tiny-math", "data.levels=[1,2]"])
    model, tok = build_model(cfg.model)
    train, _ = load_rows(cfg.data)
    samplers = {name: cls(model, tok) for name, cls in SAMPLERS.items()}
    times: dict[str, list[float]] = {name: [] for name in samplers}
    lengths: dict[str, list[float]] = {name: [] for name in samplers}
    torch.manual_seed(0)
    for r in range(a.rounds + 1):  # round 0 warms up
        rows = range(r * a.prompts, (r + 1) * a.prompts)
        prompts = [encode_prompt(train[i], tok, "tiny-math").ids for i in rows]
        names = list(samplers) if r % 2 == 0 else list(samplers)[::-1]
        for name in names:
            t0 = time.perf_counter()
            out = samplers[name].sample(prompts, a.n, a.max_new_tokens, a.temperature)
            if r:
                times[name].append(time.perf_counter() - t0)
                lengths[name].append(statistics.mean(len(c.tokens) for c in out))
    base = statistics.median(times["generate"])
    print(f"{a.prompts} prompts x {a.n} samples, <= {a.max_new_tokens} tokens, T={a.temperature}, "
          f"{a.threads} thread(s), median of {a.rounds} rounds")
    print("| sampler | s per call | mean completion tokens | ratio |\n|---|---|---|---|")
    for name in samplers:
        m = statistics.median(times[name])
        print(f"| {name} | {m:.3f} | {statistics.mean(lengths[name]):.1f} | {m / base:.2f} |")


if __name__ == "__main__":
    main()
