"""The SFT loop: one run, LoRA or FullFT, from a locked run directory to a finished one. RL runs
(task=rl) take the sibling loop in lora_lab/rl.py; both stand on lora_lab/learner.py (learner,
checkpoints, resume, logging) and are started by lora_lab/launch.py.

LoRA and FullFT differ only in which parameters train. AdamW with a constant LR and no warmup
(the paper's setting); loss = mean NLL in nats over the assistant tokens of the whole optimizer
batch (micro-batches are summed, then divided by the batch's target-token count, so gradient
accumulation gives exactly the full-batch gradient). Beside it, bits per UTF-8 byte of the target
text (train_bpb, eval_bpb): the same summed NLL / ln 2 / the bytes the target tokens decode to,
counted per row at tokenization (lora_lab/data.py token_bytes), comparable across tokenizers.
Launching the same config again resumes from the last checkpoint; a completed or diverged run is
reported and skipped. Under torchrun or a multi-task SLURM step the run is sharded with FSDP2
over the processes (lora_lab/distributed.py): same config, same global batch, same loss.

    lora-lab train method=lora lora.rank=4 train.max_steps=20 run.root=/tmp/r
    python -m lora_lab train method=full train.max_steps=20
    torchrun --nproc_per_node 2 -m lora_lab train method=full train.max_steps=20
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from lora_lab import distributed
from lora_lab import lora as lora_mod
from lora_lab.config import Config
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, load_unseen, order_seed, use_chat_template
from lora_lab.learner import (Progress, build_learner, record_failure, resume, save_checkpoint, start_logging,
                              wandb_summary)
from lora_lab.models import base_reference, load_tokenizer, target_logits
from lora_lab.runs import RunDir


def bits_per_byte(nll: float, n_bytes: int) -> float:
    """Bits per UTF-8 byte of target text: a summed NLL in nats / ln 2 / the bytes its target tokens
    decode to (NaN for targets of no bytes)."""
    return nll / math.log(2) / n_bytes if n_bytes else math.nan


def batch_nll(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over target tokens, and their count."""
    targets = batch["labels"][:, 1:]
    where = targets != IGNORE_INDEX
    with lora_mod.cached():
        logits = target_logits(model, batch["input_ids"], batch["attention_mask"], where)
    return F.cross_entropy(logits.float(), targets[where], reduction="sum"), int(where.sum())


@torch.no_grad()
def evaluate(model, split, micro: int, pad_id: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    by_length = sorted(range(len(split)), key=lambda i: len(split.ids[i]))
    chunks = [by_length[i:i + micro] for i in range(0, len(split), micro)]
    # Several processes: micro-batches dealt round-robin; every rank runs the same number of forwards
    # (sharded weights are gathered collectively), a rank short of one repeats a batch and drops it.
    env = distributed.current()
    for j in range(0, len(chunks), env.world_size):
        k = j + env.rank
        batch = {key: v.to(device) for key, v in collate(split, chunks[min(k, len(chunks) - 1)], pad_id).items()}
        nll, n = batch_nll(model, batch)
        if k < len(chunks):
            total, count = total + nll.item(), count + n
    model.train()
    total, count = distributed.all_reduce_sum([total, count], device)
    return total / max(count, 1)


def train_sft(cfg: Config, rid: str, rd: RunDir, rows: tuple) -> dict:
    """The SFT loop of one run whose directory this process has locked (lora_lab/launch.py): build
    or resume the learner, train to the last step, evaluate, export the adapter; returns the summary.
    A diverged run is a result; a failure is recorded in summary.json and re-raised."""
    t_launch = time.monotonic()
    rd.write_config(cfg)
    rd.clear_summary()
    summary = {"run_id": rid, "method": cfg.method, "status": "failed", "steps": 0}
    run = None
    try:
        # Tokenized before the model is built: a data problem ends the run before the weights take
        # any memory (at the paper's scale, before a GPU allocation is spent on loading 8B weights).
        tok = use_chat_template(load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision), cfg.data)
        train_split, eval_split = load_data(cfg, tok, rows)
        unseen_split = load_unseen(cfg, tok)
        learner = build_learner(cfg)
        model, device, sites, trainable, opt = learner.model, learner.device, learner.sites, learner.trainable, learner.opt
        summary.update(trainable_params=learner.trainable_params, total_params=learner.total_params)

        order = BatchOrder(len(train_split), cfg.optim.batch_size, order_seed(cfg))
        total = cfg.train.max_steps or cfg.train.epochs * order.steps_per_epoch
        micro, pad_id = cfg.optim.micro_for(distributed.current().world_size), tok.pad_token_id

        step, wall, tokens, examples = 0, 0.0, 0, 0
        state = resume(cfg, rid, rd, learner)
        if state is not None:
            step, wall, tokens, examples = state["step"], state["wall_s"], state["tokens"], state["examples"]
        run = start_logging(cfg, rid, rd, device, step)
        summary.update(max_steps=total, steps=step)

        def checkpoint(final: bool = False, **extra) -> None:
            save_checkpoint(cfg, rd, learner, final, step=step, wall_s=wall, tokens=tokens, examples=examples, **extra)

        # The held-out split is the same at every eval: its target tokens and bytes are counted once.
        eval_targets = sum(int((y[1:] != IGNORE_INDEX).sum()) for y in eval_split.labels)
        eval_bytes = sum(eval_split.target_bytes)

        eval_unseen = None

        def log_eval() -> tuple[float, float]:
            nonlocal eval_unseen
            loss = evaluate(model, eval_split, micro, pad_id, device)
            line = {"eval_loss": loss, "eval_bpb": bits_per_byte(loss * eval_targets, eval_bytes)}
            if unseen_split is not None:  # data.eval_unseen: C9's no-knowledge loss, on this run's own model
                eval_unseen = line["eval_unseen_loss"] = evaluate(model, unseen_split, micro, pad_id, device)
            rd.log({"step": step, **line})
            if run:
                run.log(line, step=step)
            return loss, line["eval_bpb"]

        progress = Progress(cfg, total, step, rid[:40])
        loss_value, bpb_value, eval_loss, eval_bpb, status = math.nan, math.nan, None, None, "completed"
        while step < total:
            t0 = time.perf_counter()
            # Length-sorted micro-batches pad less; the step's set of sequences is unchanged.
            idx = sorted(order.batch(step), key=lambda i: len(train_split.ids[i]))
            # Several processes: each takes its share of the global batch (distributed.local_share).
            mine = distributed.local_share(idx)
            micro_batches = [collate(train_split, mine[i:i + micro], pad_id) for i in range(0, len(mine), micro)]
            n_mine = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
            tokens_mine = sum(int(b["attention_mask"].sum()) for b in micro_batches)
            bytes_mine = sum(train_split.target_bytes[i] for i in mine)
            counts = distributed.all_reduce_sum([n_mine, tokens_mine, bytes_mine], device)
            n_target, step_tokens, n_bytes = (int(x) for x in counts)
            # FSDP averages gradients over ranks: world_size x (this rank's NLL / global count) makes
            # the average the gradient of the global batch's mean NLL.
            grad_scale = distributed.current().world_size / n_target
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for b in micro_batches:
                b = {k: v.to(device) for k, v in b.items()}
                nll, _ = batch_nll(model, b)
                (nll * grad_scale).backward()
                loss_sum += nll.item()
            loss_sum = distributed.all_reduce_sum([loss_sum], device)[0]
            loss_value, bpb_value = loss_sum / n_target, bits_per_byte(loss_sum, n_bytes)
            if not math.isfinite(loss_value) or loss_value > cfg.train.diverge_loss:
                status = "diverged"
                rd.log({"step": step + 1, "train_loss": loss_value, "train_bpb": bpb_value, "lr": cfg.optim.lr,
                        "diverged": True})
                summary["diverged_at_step"] = step + 1
                break
            grad_norm = distributed.clip_grad_norm(trainable, cfg.optim.grad_clip or math.inf)
            opt.step()
            step += 1
            wall += time.perf_counter() - t0
            tokens += step_tokens
            examples += len(idx)
            row = {"step": step, "train_loss": loss_value, "train_bpb": bpb_value, "lr": cfg.optim.lr, "examples": examples,
                   "tokens": tokens, "target_tokens": n_target, "target_bytes": n_bytes, "wall_s": round(wall, 4),
                   "grad_norm": grad_norm, "epoch": order.epoch_of(step - 1)}
            rd.log(row)
            if run:
                run.log(row, step=step)
            progress.update(step, loss_value)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                eval_loss, eval_bpb = log_eval()
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < total:
                checkpoint()
        progress.close()

        if status == "completed":
            eval_loss, eval_bpb = log_eval()
            if sites:
                whole = distributed.export_sites(sites) if distributed.current().world_size > 1 else sites
                if distributed.current().is_main:
                    lora_mod.export_peft(whole, cfg.lora, rd.adapter_path, base_reference(cfg.model))
        summary.update(status=status, steps=step, final_train_loss=loss_value, final_eval_loss=eval_loss,
                       final_train_bpb=bpb_value, final_eval_bpb=eval_bpb, wall_s=round(wall, 3),
                       launch_wall_s=round(time.monotonic() - t_launch, 3), tokens=tokens, examples=examples,
                       step_time_s=round(wall / step, 5) if step else None)
        if unseen_split is not None:
            summary["final_eval_unseen_loss"] = eval_unseen
        if status == "completed":
            checkpoint(final=True, summary=summary)
        rd.write_summary(summary)
        if run:
            wandb_summary(run, summary)
        progress.update(step, loss_value, force=True)
        return summary
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        stop = record_failure(rd, summary, exc)
        if stop is not exc:
            raise stop from None
        raise
    finally:
        if run:
            run.finish()
