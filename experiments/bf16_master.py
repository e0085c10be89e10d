"""FullFT in bf16 on one process: how far the loss drops with fp32 master weights and bf16 compute
(what `model.dtype=bfloat16` does now) against fp32, and against pure bf16 AdamW (bf16 weights and
moments: what it did before). Tiny-llama on tiny-tulu, lr 3e-5, batch 32, 16 steps, CPU.

    python experiments/bf16_master.py [--steps 16] [--lr 3e-5]
"""

from __future__ import annotations

import argparse
import tempfile

from lora_lab import learner
from lora_lab.config import compose
from lora_lab.launch import train
from lora_lab.runs import RunDir, run_dir


def drop(overrides: list[str], root: str) -> float:
    cfg = compose([*overrides, f"run.root={root}"])
    train(cfg)
    losses = [r["train_loss"] for r in RunDir(run_dir(cfg)).metrics() if "train_loss" in r]
    return losses[0] - sum(losses[-3:]) / 3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--lr", default="3e-5")
    a = p.parse_args()
    common = ["method=full", f"optim.lr={a.lr}", "data.num_examples=512", "optim.batch_size=32",
              f"train.max_steps={a.steps}", "data.max_seq_len=64", "train.eval_every=0", "train.checkpoint_every=0",
              "logger.progress=none"]
    with tempfile.TemporaryDirectory() as root:
        fp32 = drop([*common, "model.dtype=float32"], f"{root}/a")
        master = drop([*common, "model.dtype=bfloat16"], f"{root}/b")
        learner.compute_in = lambda model, dtype: None  # the old path: weights and moments stay bf16
        real_float = learner.torch.nn.Module.float
        learner.torch.nn.Module.float = lambda self: self
        try:
            pure = drop([*common, "model.dtype=bfloat16"], f"{root}/c")
        finally:
            learner.torch.nn.Module.float = real_float
    print(f"loss drop over {a.steps} steps at lr {a.lr} (first step minus the mean of the last three):")
    print(f"| fp32 | bf16 compute, fp32 master weights | pure bf16 AdamW |\n|---|---|---|\n"
          f"| {fp32:.3f} | {master:.3f} ({master / fp32:.2f}x) | {pure:.3f} ({pure / fp32:.2f}x) |")


if __name__ == "__main__":
    main()
