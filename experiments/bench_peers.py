"""lora-lab's training step against its peers on the same batches: a plain PyTorch loop over a peft
LoRA model, and TRL's SFTTrainer over the same peft model (TRL is optional: skipped, with a message,
when it is not installed). Same model (tiny-llama), same data (tiny-tulu, lora-lab's tokenization),
same LoRA start (our initial adapter, exported in peft's format and loaded by peft), the same
length-sorted micro-batches of each step in the same order, the same AdamW. Reports the median step
time of each, the ratio to ours, and how far each trajectory is from ours (train loss per step; the
adapter after the last step for the plain loop).

    python experiments/bench_peers.py                  # LoRA rank 8, batch 32, 20 steps (median of the last 16)
    python experiments/bench_peers.py --steps 3 --warmup 1     # a quick check that it runs

Prints a table for experiments/LOG.md with the command line. Run it on a quiet machine: it measures time.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lora_lab import lora as lora_mod
from lora_lab.config import compose
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, order_seed
from lora_lab.distributed import clip_grad_norm
from lora_lab.learner import _adam_eps, _seed_all, build_learner
from lora_lab.models import base_reference, build_model
from lora_lab.train import batch_nll


def step_batches(cfg, split, pad_id: int, steps: int) -> list[tuple[list[dict], int, list[int]]]:
    """Each step's micro-batches as lora-lab's loop builds them, its target-token count and its rows in order."""
    order = BatchOrder(len(split), cfg.optim.batch_size, order_seed(cfg))
    micro = cfg.optim.micro_for(1)
    out = []
    for step in range(steps):
        idx = sorted(order.batch(step), key=lambda i: len(split.ids[i]))
        mbs = [collate(split, idx[i:i + micro], pad_id) for i in range(0, len(idx), micro)]
        out.append((mbs, sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in mbs), idx))
    return out


def adamw(cfg, params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                             eps=_adam_eps(cfg.optim.adam_eps), weight_decay=cfg.optim.weight_decay)


def run_ours(cfg, batches) -> tuple[list[float], list[float], dict]:
    """lora-lab's step (lora_lab/train.py): our LoRA, target-position logits, grad norm, AdamW."""
    learner = build_learner(cfg)
    times, losses = [], []
    for mbs, n_target, _ in batches:
        t0 = time.perf_counter()
        learner.opt.zero_grad(set_to_none=True)
        loss = 0.0
        for b in mbs:
            nll, _ = batch_nll(learner.model, b)
            (nll / n_target).backward()
            loss += nll.item()
        clip_grad_norm(learner.trainable, cfg.optim.grad_clip or float("inf"))
        learner.opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss / n_target)
    return times, losses, {"sites": learner.sites}


def peft_model(cfg, start_adapter: Path):
    """The base model with our initial adapter, loaded by peft (trainable)."""
    from peft import PeftModel

    base, _ = build_model(cfg.model, "cpu")
    return PeftModel.from_pretrained(base, str(start_adapter), is_trainable=True)


def run_plain(cfg, batches, start_adapter: Path) -> tuple[list[float], list[float], dict]:
    """The textbook loop: peft model, full logits, shifted cross-entropy summed over targets."""
    model = peft_model(cfg, start_adapter)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(cfg, params)
    times, losses = [], []
    for mbs, n_target, _ in batches:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for b in mbs:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), b["labels"][:, 1:].reshape(-1),
                                  ignore_index=IGNORE_INDEX, reduction="sum")
            (nll / n_target).backward()
            loss += nll.item()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss / n_target)
    return times, losses, {"model": model}


def run_trl(cfg, split, batches, start_adapter: Path, out_dir: Path) -> tuple[list[float], list[float], dict] | str:
    """TRL's SFTTrainer on the same peft model and the same micro-batches (a sequential sampler over
    the rows laid out step by step; gradient accumulation over the step's micro-batches)."""
    try:
        import trl
        from datasets import Dataset
        from transformers import TrainerCallback
    except ImportError as exc:
        return f"skipped: TRL is not installed ({exc}); `pip install -c constraints.txt trl` adds it without changing torch"
    from torch.utils.data import SequentialSampler

    micro = cfg.optim.micro_for(1)
    rows = [i for _, _, idx in batches for i in idx]
    data = Dataset.from_dict({"input_ids": [split.ids[i].tolist() for i in rows],
                              "labels": [split.labels[i].tolist() for i in rows]})

    class Sequential(trl.SFTTrainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.losses, self.t0 = [], [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    clock = Clock()
    args = trl.SFTConfig(
        output_dir=str(out_dir), max_steps=len(batches), per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.optim.batch_size // micro, learning_rate=cfg.optim.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.optim.weight_decay,
        adam_beta1=cfg.optim.beta1, adam_beta2=cfg.optim.beta2, adam_epsilon=_adam_eps(cfg.optim.adam_eps),
        max_grad_norm=cfg.optim.grad_clip or 0.0, optim="adamw_torch", logging_steps=1, save_strategy="no",
        report_to=[], use_cpu=True, bf16=False, fp16=False, seed=cfg.train.seed, dataloader_num_workers=0,
        max_length=None, packing=False, dataset_kwargs={"skip_prepare_dataset": True}, disable_tqdm=True,
        remove_unused_columns=False)
    tok = split_tokenizer(cfg)
    trainer = Sequential(model=peft_model(cfg, start_adapter), args=args, train_dataset=data, processing_class=tok,
                         callbacks=[clock])
    trainer.train()
    return clock.times, clock.losses, {"version": trl.__version__}


def split_tokenizer(cfg):
    from lora_lab.data import use_chat_template
    from lora_lab.models import load_tokenizer

    return use_chat_template(load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision), cfg.data)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=4, help="first steps left out of the median")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the run (default: the tiny default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = compose(["method=lora", f"lora.rank={args.rank}", *args.overrides])
    tok = split_tokenizer(cfg)
    split, _ = load_data(cfg, tok)
    batches = step_batches(cfg, split, tok.pad_token_id, args.steps)

    results: dict[str, tuple | str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Our initial adapter (seeded as a run seeds it), in peft's format: every peer starts from it.
        _seed_all(cfg.train.seed)
        ours_start = build_learner(cfg)
        start = Path(tmp) / "start"
        lora_mod.export_peft(ours_start.sites, cfg.lora, start, base_reference(cfg.model))
        del ours_start
        _seed_all(cfg.train.seed)
        results["lora-lab"] = run_ours(cfg, batches)
        results["plain PyTorch loop + peft"] = run_plain(cfg, batches, start)
        results["TRL SFTTrainer + peft"] = run_trl(cfg, split, batches, start, Path(tmp) / "trl")

        # The adapters after the last step: ours against the plain loop's.
        ours_end, plain_end = Path(tmp) / "ours", Path(tmp) / "plain"
        lora_mod.export_peft(results["lora-lab"][2]["sites"], cfg.lora, ours_end, base_reference(cfg.model))
        results["plain PyTorch loop + peft"][2]["model"].save_pretrained(str(plain_end))
        from safetensors.torch import load_file

        a = load_file(str(ours_end / "adapter_model.safetensors"))
        b = {k.replace(".default", ""): v for k, v in load_file(str(plain_end / "adapter_model.safetensors")).items()}
        adapter_diff = max((a[k] - b[k]).abs().max().item() for k in a) if set(a) == set(b) else float("nan")

    med = {name: statistics.median(r[0][args.warmup:]) for name, r in results.items() if not isinstance(r, str)}
    ours_losses = results["lora-lab"][1]
    print(f"`{shlex.join(['python', 'experiments/bench_peers.py', *(argv if argv is not None else sys.argv[1:])])}` "
          f"({time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads): tiny-llama on tiny-tulu, LoRA rank {cfg.lora.rank} "
          f"({cfg.lora.layers} layers), batch {cfg.optim.batch_size} in micro-batches of {cfg.optim.micro_for(1)}, "
          f"{args.steps} steps, median of the last {args.steps - args.warmup}\n")
    print("| training step | median step (ms) | time / lora-lab's | largest train-loss difference to lora-lab |")
    print("|---|---|---|---|")
    for name, r in results.items():
        if isinstance(r, str):
            print(f"| {name} | {r} | | |")
            continue
        n = min(len(r[1]), len(ours_losses))
        diff = max(abs(x - y) for x, y in zip(r[1][:n], ours_losses[:n])) if n else float("nan")
        print(f"| {name} | {med[name] * 1000:.0f} | {med[name] / med['lora-lab']:.2f}x | {diff:.2e} over {n} steps |")
    print(f"\nadapter after {args.steps} steps, largest |lora-lab - plain loop| entry: {adapter_diff:.2e}")
    if not isinstance(results["TRL SFTTrainer + peft"], str):
        print("(TRL's losses are the ones it logs, rounded to 4 significant digits; its step also computes the "
              "entropy and token accuracy it logs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
