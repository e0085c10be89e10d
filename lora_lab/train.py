"""The SFT loop: one run, LoRA or FullFT, from a Config to a finished run directory (task=rl runs
go to lora_lab/rl.py, which shares this file's learner, checkpoint and logging helpers).

LoRA and FullFT differ only in which parameters train. AdamW with a constant LR and no warmup
(the paper's setting); loss = mean NLL in nats over the assistant tokens of the whole optimizer
batch (micro-batches are summed, then divided by the batch's target-token count, so gradient
accumulation gives exactly the full-batch gradient). Launching the same config again resumes from
the last checkpoint; a completed or diverged run is reported and skipped. Under torchrun or a
multi-task SLURM step the run is sharded with FSDP2 over the processes (lora_lab/distributed.py):
same config, same global batch, same loss.

    lora-lab train method=lora lora.rank=4 train.max_steps=20 run.root=/tmp/r
    python -m lora_lab.train method=full train.max_steps=20
    torchrun --nproc_per_node 2 -m lora_lab.train method=full train.max_steps=20
"""

from __future__ import annotations

import math
import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lora_lab import distributed
from lora_lab import lora as lora_mod
from lora_lab.config import Config, ConfigError, run_dir, run_id
from lora_lab.data import IGNORE_INDEX, BatchOrder, collate, load_data, load_rows, order_seed
from lora_lab.models import (build_model, count_params, model_config, resolve_device, set_threads_from_env,
                             target_logits)
from lora_lab.runs import FINAL_STATUSES, RunDir


def preflight(cfg: Config) -> None:
    """Checks that need the model's architecture (not its weights), before anything heavy."""
    resolve_device(cfg.train.device)
    env = distributed.current()
    if env.world_size > 1 and cfg.task == "rl":
        raise ConfigError(f"task=rl: runs on one process; launch it without torchrun / several SLURM tasks "
                          f"(this launch has {env.world_size})")
    if cfg.method != "lora":
        return
    arch = model_config(cfg.model)
    active = getattr(arch, "num_experts_per_tok", None)
    if getattr(arch, "num_experts", None) and active and cfg.lora.layers in ("mlp", "all") and cfg.lora.rank % active:
        raise ConfigError(f"lora.rank={cfg.lora.rank}: must be a multiple of the {active} active experts of "
                          f"{cfg.model.name} (per-expert rank = rank / active experts)")


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


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Progress:
    """A tqdm bar on a terminal, plain periodic lines otherwise (logs of batch jobs)."""

    def __init__(self, cfg: Config, total: int, start: int, name: str, metric: str = "train_loss"):
        mode = cfg.logger.progress if distributed.current().is_main else "none"
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total, self.name, self.every = mode, total, name, cfg.logger.progress_every_s
        self.metric = metric
        self.last = 0.0
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, leave=False)

    def update(self, step: int, loss: float, force: bool = False) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({self.metric: f"{loss:.4f}"})
        elif self.mode == "lines" and (force or time.monotonic() - self.last >= self.every):
            self.last = time.monotonic()
            print(f"[{self.name}] step {step}/{self.total} {self.metric} {loss:.4f}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _wandb(cfg: Config, rid: str, rd: RunDir):
    if cfg.logger.wandb == "disabled" or not distributed.current().is_main:
        return None
    import hashlib

    import wandb

    # One wandb run per run directory; a relaunch resumes it.
    wid = hashlib.sha256(f"{cfg.run.experiment}/{rid}".encode()).hexdigest()[:16]
    return wandb.init(project=cfg.logger.wandb_project, entity=cfg.logger.wandb_entity, mode=cfg.logger.wandb,
                      name=rid, id=wid, resume="allow", dir=str(rd.path), config=cfg.to_dict(),
                      group=cfg.run.experiment)


def train(cfg: Config) -> dict:
    """Run (or resume, or skip) one run, SFT or (task=rl) RL; returns its summary. Never raises for
    a diverged run; a failure is recorded in summary.json and re-raised."""
    started = not distributed.current().world_size > 1 and distributed.world_size_from_env() > 1
    env, _ = distributed.setup(cfg.train.device)
    rid = run_id(cfg)
    # Several processes: rank 0 alone writes the run directory; the others read it (shared filesystem).
    rd = RunDir(run_dir(cfg)) if env.is_main else distributed.ReadOnlyRunDir(run_dir(cfg))
    try:
        done = distributed.broadcast_object(rd.summary())
        if done and done.get("status") in FINAL_STATUSES:
            final = ("final reward", done.get("final_reward")) if cfg.task == "rl" else ("final train loss", done.get("final_train_loss"))
            if env.is_main:
                print(f"{rid}: already {done['status']} ({final[0]} {final[1]}); skipping", file=sys.stderr)
            return done
        preflight(cfg)
        # A data set that cannot be used (not available offline, wrong schema, too many malformed rows)
        # raises DataError here: before the run directory is written or the model loaded (CLI exit 2).
        rows = load_rows(cfg.data)
        rd.lock()
        distributed.barrier()  # rank 0 holds the lock (or has raised RunBusy) before anyone goes on
        try:
            if cfg.task == "rl":
                from lora_lab.rl import train_rl

                return train_rl(cfg, rid, rd, rows)
            return _train_locked(cfg, rid, rd, rows)
        finally:
            rd.unlock()
    finally:
        if started:
            distributed.teardown()


@dataclass
class Learner:
    """The model being trained, its trainable parameters and their optimizer."""

    model: torch.nn.Module
    tok: Any
    device: torch.device
    sites: list  # LoRA sites (empty for FullFT)
    trainable: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    total_params: int

    @property
    def trainable_params(self) -> int:
        return sum(p.numel() for p in self.trainable)


def build_learner(cfg: Config) -> Learner:
    """Seeded model with LoRA (or every parameter trainable for FullFT) and AdamW: constant LR,
    no warmup (the paper's setting). Shared by SFT and RL."""
    set_threads_from_env()
    device = resolve_device(cfg.train.device)
    _seed_all(cfg.train.seed)
    env = distributed.current()
    if env.world_size > 1:
        device = torch.device("cuda", env.local_rank) if device.type == "cuda" else device
        # Sharded with FSDP2, from rank 0's weights and LoRA init: the one-process run's start.
        model, tok, total_params, sites = distributed.build_sharded(cfg, device)
    else:
        model, tok = build_model(cfg.model, device)
        total_params = count_params(model)
        sites = lora_mod.apply_lora(model, cfg.lora) if cfg.method == "lora" else []
    if cfg.dist.activation_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and with FSDP.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method == "lora":
        groups = lora_mod.param_groups(model, cfg.optim.lr, cfg.lora.lr_a_mult, cfg.lora.lr_b_mult)
    else:
        model.requires_grad_(True)
        groups = [{"params": [p for p in model.parameters()], "lr": cfg.optim.lr, "name": "all"}]
    trainable = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                            eps=_adam_eps(cfg.optim.adam_eps), weight_decay=cfg.optim.weight_decay)
    return Learner(model, tok, device, sites, trainable, opt, total_params)


def resume(cfg: Config, rid: str, rd: RunDir, learner: Learner) -> dict | None:
    """Restore weights, optimizer and RNG from an unfinished run's checkpoint; its state, or None."""
    if distributed.current().world_size > 1:
        state = distributed.load_sharded(rd.checkpoint_path, learner.model, learner.opt)
        if state is not None:
            if distributed.current().is_main:
                print(f"{rid}: resuming from step {state['step']} (sharded checkpoint of {state['world_size']} "
                      f"processes)", file=sys.stderr)
            return state
        single = rd.checkpoint_path.exists() and not (rd.load_checkpoint() or {}).get("final") if distributed.current().is_main else None
        if distributed.broadcast_object(single):
            raise RuntimeError(f"{rd.checkpoint_path}: a one-process checkpoint cannot resume on "
                               f"{distributed.current().world_size} processes; relaunch it on one")
        return None
    state = rd.load_checkpoint()
    if state is None or state.get("final"):
        return None
    trainable_state = state["trainable"]
    (learner.model.load_state_dict(trainable_state) if cfg.method == "full"
     else _load_named(learner.model, trainable_state))
    learner.opt.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    print(f"{rid}: resuming from step {state['step']}", file=sys.stderr)
    return state


def save_checkpoint(cfg: Config, rd: RunDir, learner: Learner, final: bool, **counters: Any) -> None:
    """Atomically write what resume needs: `counters` (step, wall_s, ...), weights, optimizer, RNG.
    Several processes: sharded (DCP) while the run goes on; the final one gathered into state.pt."""
    if distributed.current().world_size > 1:
        if not final:
            distributed.save_sharded(rd.checkpoint_path, learner.model, learner.opt, counters)
            return
        weights = (distributed.full_model_state(learner.model) if cfg.method == "full" else
                   {n: distributed.full_tensor(p).cpu() for n, p in lora_mod.lora_parameters(learner.model)})
        rd.save_checkpoint({**counters, "final": True, "trainable": weights, "optimizer": None, "rng": _rng_state()})
        distributed.remove_sharded(rd.checkpoint_path)
        return
    rd.save_checkpoint({
        **counters, "final": final, "trainable": _trainable_state(learner.model, cfg),
        # A finished run needs no optimizer state (for an 8B FullFT run it is 64 GB).
        "optimizer": None if final else learner.opt.state_dict(), "rng": _rng_state(),
    })


def start_logging(cfg: Config, rid: str, rd: RunDir, device: torch.device, step: int, keep_upto_step: int | None = None):
    """metrics.jsonl cut back to the checkpoint's step (or keep_upto_step), meta.json, and the wandb
    run (or None)."""
    rd.open_metrics(keep_upto_step=step if keep_upto_step is None else keep_upto_step)
    rd.write_meta(device, resumed_from=step)
    return _wandb(cfg, rid, rd)


def record_failure(rd: RunDir, summary: dict, exc: BaseException) -> None:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        # Interrupted, not failed: Ctrl-C, or a SLURM preemption / time limit that submitit answers by
        # requeueing the job and exiting. No summary: the run stays unfinished and the next launch
        # (the requeued job, or a relaunched sweep) resumes it from its last checkpoint.
        return
    summary.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    rd.write_summary(summary)


def _train_locked(cfg: Config, rid: str, rd: RunDir, rows: tuple) -> dict:
    t_launch = time.monotonic()
    rd.write_config(cfg)
    rd.clear_summary()
    summary = {"run_id": rid, "method": cfg.method, "status": "failed", "steps": 0}
    run = None
    try:
        learner = build_learner(cfg)
        model, tok, device, sites, trainable, opt = (learner.model, learner.tok, learner.device, learner.sites,
                                                     learner.trainable, learner.opt)
        summary.update(trainable_params=learner.trainable_params, total_params=learner.total_params)

        train_split, eval_split = load_data(cfg, tok, rows)
        order = BatchOrder(len(train_split), cfg.optim.batch_size, order_seed(cfg))
        total = cfg.train.max_steps or cfg.train.epochs * order.steps_per_epoch
        micro, pad_id = cfg.optim.micro, tok.pad_token_id

        step, wall, tokens, examples = 0, 0.0, 0, 0
        state = resume(cfg, rid, rd, learner)
        if state is not None:
            step, wall, tokens, examples = state["step"], state["wall_s"], state["tokens"], state["examples"]
        run = start_logging(cfg, rid, rd, device, step)
        summary.update(max_steps=total, steps=step)

        def checkpoint(final: bool = False) -> None:
            save_checkpoint(cfg, rd, learner, final, step=step, wall_s=wall, tokens=tokens, examples=examples)

        progress = Progress(cfg, total, step, rid[:40])
        loss_value, eval_loss, status = math.nan, None, "completed"
        while step < total:
            t0 = time.perf_counter()
            # Length-sorted micro-batches pad less; the step's set of sequences is unchanged.
            idx = sorted(order.batch(step), key=lambda i: len(train_split.ids[i]))
            # Several processes: each takes its share of the global batch (distributed.local_share).
            mine = distributed.local_share(idx)
            micro_batches = [collate(train_split, mine[i:i + micro], pad_id) for i in range(0, len(mine), micro)]
            n_mine = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro_batches)
            tokens_mine = sum(int(b["attention_mask"].sum()) for b in micro_batches)
            n_target, step_tokens = (int(x) for x in distributed.all_reduce_sum([n_mine, tokens_mine], device))
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
            loss_value = distributed.all_reduce_sum([loss_sum], device)[0] / n_target
            if not math.isfinite(loss_value) or loss_value > cfg.train.diverge_loss:
                status = "diverged"
                rd.log({"step": step + 1, "train_loss": loss_value, "lr": cfg.optim.lr, "diverged": True})
                summary["diverged_at_step"] = step + 1
                break
            grad_norm = distributed.clip_grad_norm(trainable, cfg.optim.grad_clip or math.inf)
            opt.step()
            step += 1
            wall += time.perf_counter() - t0
            tokens += step_tokens
            examples += len(idx)
            row = {"step": step, "train_loss": loss_value, "lr": cfg.optim.lr, "examples": examples,
                   "tokens": tokens, "target_tokens": n_target, "wall_s": round(wall, 4), "grad_norm": grad_norm,
                   "epoch": order.epoch_of(step - 1)}
            rd.log(row)
            if run:
                run.log(row, step=step)
            progress.update(step, loss_value)
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                eval_loss = evaluate(model, eval_split, micro, pad_id, device)
                rd.log({"step": step, "eval_loss": eval_loss})
                if run:
                    run.log({"eval_loss": eval_loss}, step=step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < total:
                checkpoint()
        progress.close()

        if status == "completed":
            eval_loss = evaluate(model, eval_split, micro, pad_id, device)
            rd.log({"step": step, "eval_loss": eval_loss})
            if run:
                run.log({"eval_loss": eval_loss}, step=step)
            if sites:
                whole = distributed.export_sites(sites) if distributed.current().world_size > 1 else sites
                if distributed.current().is_main:
                    lora_mod.export_peft(whole, cfg.lora, rd.adapter_path, cfg.model.name)
            checkpoint(final=True)
        summary.update(status=status, steps=step, final_train_loss=loss_value, final_eval_loss=eval_loss,
                       wall_s=round(wall, 3), launch_wall_s=round(time.monotonic() - t_launch, 3),
                       tokens=tokens, examples=examples, step_time_s=round(wall / step, 5) if step else None)
        rd.write_summary(summary)
        progress.update(step, loss_value, force=True)
        return summary
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        record_failure(rd, summary, exc)
        raise
    finally:
        if run:
            run.finish()


def _adam_eps(eps: float) -> float:
    """adam_eps=0 (claim C8) as the limit eps -> 0+: torch computes 0 / (0 + 0) = NaN for an entry
    whose gradients were all zero so far (LoRA's A at step 1, since B = 0), where the limit is no
    update. The smallest normal float gives that and, added to any sqrt(v) above ~1e-30, rounds away."""
    return eps if eps > 0 else torch.finfo(torch.float32).tiny


def _trainable_state(model, cfg: Config) -> dict[str, torch.Tensor]:
    if cfg.method == "full":
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {n: p.detach().clone() for n, p in lora_mod.lora_parameters(model)}


def _load_named(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(lora_mod.lora_parameters(model))
    missing = set(params) - set(state)
    if missing:
        raise RuntimeError(f"checkpoint lacks {len(missing)} adapter tensors, e.g. {sorted(missing)[0]}")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(state[n])


def main(argv: list[str] | None = None) -> int:
    from lora_lab.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
