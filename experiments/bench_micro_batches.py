"""Forward+backward time of one tiny-tulu step of 32 sequences: one padded batch vs micro-batches
of 8 or 16, in data order or sorted by length (what lora_lab.train does), and, for sorted
micro-batches of 8, logits at every position (`all`) vs at the target positions only
(lora_lab.models.target_logits, what lora_lab.train does). Same process, same batches, interleaved;
median over steps 2..N (experiments/LOG.md, 2026-11-23 and 2026-11-24).

    python experiments/bench_micro_batches.py --steps 24
"""

import argparse
import statistics
import time

import torch.nn.functional as F

from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, order_seed
from lora_lab.lora import apply_lora
from lora_lab.models import build_model
from lora_lab.train import batch_nll


def all_positions_nll(model, batch):
    """The loss with the unembedding run at every position (lora_lab.train before target_logits)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), batch["labels"][:, 1:].flatten(),
                           ignore_index=IGNORE_INDEX, reduction="sum"), None


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=24)
    a = p.parse_args()
    cfg = compose(["optim.lr=3e-3"])
    model, tok = build_model(cfg.model)
    apply_lora(model, cfg.lora)
    train_split, _ = load_data(cfg, tok)
    order = BatchOrder(len(train_split), 32, order_seed(cfg))
    variants = [(32, False, "targets"), (8, False, "targets"), (8, True, "targets"), (16, True, "targets"),
                (32, True, "targets"), (8, True, "all")]
    times = {v: [] for v in variants}
    for step in range(a.steps):
        for micro, by_length, head in variants:  # interleaved, so drift in machine load hits all alike
            nll_fn = batch_nll if head == "targets" else all_positions_nll
            idx = order.batch(step)
            if by_length:
                idx = sorted(idx, key=lambda i: len(train_split.ids[i]))
            t = time.perf_counter()
            mbs = [collate(train_split, idx[i:i + micro], tok.pad_token_id) for i in range(0, len(idx), micro)]
            n = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in mbs)
            for b in mbs:
                nll, _ = nll_fn(model, b)
                (nll / n).backward()
            times[(micro, by_length, head)].append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
    base = statistics.median(times[(32, False, "targets")][2:])
    for (micro, by_length, head), ts in times.items():
        m = statistics.median(ts[2:])
        print(f"micro={micro:<3} sorted={str(by_length):<5} logits={head:<8} median {m * 1000:.0f} ms  ratio {m / base:.2f}")


if __name__ == "__main__":
    main()
