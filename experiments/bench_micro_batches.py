"""Forward+backward time of one tiny-tulu step of 32 sequences: one padded batch vs micro-batches
of 8 or 16, in data order or sorted by length (what lora_lab.train does). Same process, same
batches; median over steps 2..N (experiments/LOG.md, 2026-11-23 and 2026-11-24).

    python experiments/bench_micro_batches.py --steps 24
"""

import argparse
import statistics
import time

from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, order_seed
from lora_lab.lora import apply_lora
from lora_lab.models import build_model
from lora_lab.train import batch_nll


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=24)
    a = p.parse_args()
    cfg = compose(["optim.lr=3e-3"])
    model, tok = build_model(cfg.model)
    apply_lora(model, cfg.lora)
    train_split, _ = load_data(cfg, tok)
    order = BatchOrder(len(train_split), 32, order_seed(cfg))
    variants = [(32, False), (8, False), (8, True), (16, True), (32, True)]
    times = {v: [] for v in variants}
    for step in range(a.steps):
        for micro, by_length in variants:  # interleaved, so drift in machine load hits all alike
            idx = order.batch(step)
            if by_length:
                idx = sorted(idx, key=lambda i: len(train_split.ids[i]))
            t = time.perf_counter()
            mbs = [collate(train_split, idx[i:i + micro], tok.pad_token_id) for i in range(0, len(idx), micro)]
            n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in mbs)
            for b in mbs:
                nll, _ = batch_nll(model, b)
                (nll / n).backward()
            times[(micro, by_length)].append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
    base = statistics.median(times[(32, False)][2:])
    for (micro, by_length), ts in times.items():
        m = statistics.median(ts[2:])
        print(f"micro={micro:<3} sorted={str(by_length):<5} median {m * 1000:.0f} ms  ratio {m / base:.2f}")


if __name__ == "__main__":
    main()
