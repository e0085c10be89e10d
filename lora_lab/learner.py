"""What the SFT and RL loops share (lora_lab/train.py, lora_lab/rl.py): the pre-flight checks of a
run, the learner (the model, its trainable parameters and their AdamW), checkpoints and resume,
seeding and RNG state, logging (metrics.jsonl, meta.json, wandb), progress and failure records.

The two loops are siblings on top of this module and never import each other; lora_lab/launch.py
runs, resumes or skips a run and hands it to the loop its `task` names. LoRA and FullFT differ only
in which parameters train (`build_learner`).
"""

from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lora_lab import distributed
from lora_lab import lora as lora_mod
from lora_lab import memory
from lora_lab.checks import check_run_root
from lora_lab.config import Config, ConfigError
from lora_lab.data import use_chat_template
from lora_lab.models import (build_model, check_available, compute_in, count_params, model_config, resolve_device,
                             set_threads_from_env)
from lora_lab.runs import RunDir


def preflight(cfg: Config) -> None:
    """Checks that need the world (the number of processes, the device, the model's architecture but
    not its weights), before anything heavy; a ConfigError names the key (CLI exit 2)."""
    check_run_root(cfg.run.root)
    check_available(cfg.model)
    device = resolve_device(cfg.train.device)
    env = distributed.current()
    # Under torchrun / multi-task srun each process takes batch_size / world_size sequences of a step.
    distributed.check_batch(cfg.optim.batch_size, cfg.optim.micro_batch_size, distributed.world_size_from_env())
    if env.world_size > 1 and cfg.task == "rl":
        raise ConfigError(f"task=rl: runs on one process; launch it without torchrun / several SLURM tasks "
                          f"(this launch has {env.world_size})")
    if cfg.task == "rl" and cfg.rl.sampler == "vllm":
        from lora_lab import vllm_sampler  # vLLM importable, an adapter it can load

        vllm_sampler.check(cfg)
    if device.type == "cuda" and cfg.dist.memory_check:
        # The memory estimate against this GPU: one line saying what to set, before the weights load.
        memory.check_memory(cfg, distributed.world_size_from_env(), memory.device_memory(env.local_rank))
    if cfg.method != "lora":
        return
    arch = model_config(cfg.model)
    active = getattr(arch, "num_experts_per_tok", None)
    if getattr(arch, "num_experts", None) and active and cfg.lora.layers in ("mlp", "all") and cfg.lora.rank % active:
        raise ConfigError(f"lora.rank={cfg.lora.rank}: must be a multiple of the {active} active experts of "
                          f"{cfg.model.name} (per-expert rank = rank / active experts)")


def _rng_state() -> dict:
    # Tensors and plain values only, so that the checkpoint loads with torch.load(weights_only=True):
    # numpy's key array travels as a tensor.
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    kind, key, *rest = s["numpy"]  # key: a tensor; an ndarray in checkpoints written before
    np.random.set_state((kind, np.asarray(key, dtype=np.int64).astype(np.uint32), *rest))
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


def grid_point(cfg: Config) -> dict[str, Any]:
    """The values a run of a sweep is plotted by, flat: its arm (the curve it belongs to: `full`, or
    `lora-r<rank>-<layers>` with `-unembed`, as in the run id), method, LR, rank and layer set (None
    for FullFT), batch size (RL: prompts per step and samples per prompt) and seed."""
    lora = cfg.method == "lora"
    point: dict[str, Any] = {
        "arm": f"lora-r{cfg.lora.rank}-{cfg.lora.layers}" + ("-unembed" if cfg.lora.unembed else "") if lora else "full",
        "method": cfg.method, "lr": cfg.optim.lr, "rank": cfg.lora.rank if lora else None,
        "layers": cfg.lora.layers if lora else None, "seed": cfg.train.seed}
    if cfg.task == "rl":
        point.update(prompts_per_step=cfg.rl.prompts_per_step, group_size=cfg.rl.group_size)
    else:
        point["batch_size"] = cfg.optim.batch_size
    return point


def _wandb(cfg: Config, rid: str, rd: RunDir):
    """The wandb run of a run directory, or None: the runs of an experiment share a group (a sweep's
    runs, compared in one figure); its grid point is flat config values (U-curves: final loss, in
    the summary, against `lr`, one line per `arm`) and tags; the whole config is there as well.
    Its files go to WANDB_DIR where set, else into the run directory."""
    if cfg.logger.wandb == "disabled" or not distributed.current().is_main:
        return None
    import hashlib
    import os

    import wandb

    point = grid_point(cfg)
    tags = [f"{k}={v}" if k not in ("arm", "method") else str(v) for k, v in point.items() if v is not None]
    # One wandb run per run directory; a relaunch resumes it.
    wid = hashlib.sha256(f"{cfg.run.experiment}/{rid}".encode()).hexdigest()[:16]
    return wandb.init(project=cfg.logger.wandb_project, entity=cfg.logger.wandb_entity, mode=cfg.logger.wandb,
                      name=rid, id=wid, resume="allow", dir=os.environ.get("WANDB_DIR") or str(rd.path),
                      config={**cfg.to_dict(), **point, "run_id": rid}, group=cfg.run.experiment,
                      job_type=cfg.task, tags=list(dict.fromkeys(tags)))


def wandb_summary(run: Any, summary: dict) -> None:
    """summary.json's plain values (status, final losses and bits per byte, counts, times) into the
    wandb run's summary, where a dashboard reads a run's final loss."""
    run.summary.update({k: v for k, v in summary.items()
                        if k not in ("traceback", "run_id") and (v is None or isinstance(v, (bool, int, float, str)))})


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
        if cfg.method == "full" and model.dtype in (torch.bfloat16, torch.float16):
            # AdamW on bf16 weights rounds away every update below half a bf16 step (at lr 3e-5 on
            # tiny-llama, 16 steps dropped the loss 0.30 nats against fp32's 1.21): keep fp32 master
            # weights and moments, and compute in the model's dtype, as the FSDP2 path does.
            compute_in(model, model.dtype)
            model.float()
    use_chat_template(tok, cfg.data)
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


def summary_from_final(cfg: Config, rid: str, rd: RunDir) -> dict | None:
    """The summary of a run that finished but has no summary.json (deleted, or the process was killed
    between its final checkpoint and the summary): from the final checkpoint, which carries it, or,
    for a checkpoint written before it did, from the checkpoint's counters and metrics.jsonl. None
    when the run did not finish (no final checkpoint, or a LoRA run without its adapter)."""
    state = rd.load_checkpoint()
    if not state or not state.get("final"):
        return None
    if cfg.method == "lora" and not (rd.adapter_path / "adapter_model.safetensors").is_file():
        return None
    if isinstance(state.get("summary"), dict):
        return {**state["summary"], "rebuilt_from": "checkpoint"}
    lines = rd.metrics()

    def last(key: str) -> Any:
        return next((r[key] for r in reversed(lines) if r.get(key) is not None), None)

    step = state["step"]
    summary = {"run_id": rid, "method": cfg.method, "status": "completed", "steps": step, "max_steps": step,
               "trainable_params": sum(t.numel() for t in state["trainable"].values()),
               "wall_s": round(state["wall_s"], 3), "tokens": state["tokens"], "examples": state["examples"],
               "step_time_s": round(state["wall_s"] / step, 5) if step else None, "rebuilt_from": "metrics"}
    if cfg.task == "rl":
        rewards = [r["reward"] for r in lines if r.get("reward") is not None]
        tail = rewards[-max(1, len(rewards) // 10):]
        summary.update(task="rl", final_reward=sum(tail) / len(tail) if tail else None,
                       final_eval_accuracy=last("eval_accuracy"), base_eval_accuracy=state.get("base_eval_accuracy"),
                       skipped_prompts=state.get("skipped_prompts"))
        if cfg.rl.val_size:
            summary.update(final_val_accuracy=last("val_accuracy"), base_val_accuracy=state.get("base_val_accuracy"))
    else:
        summary.update(final_train_loss=last("train_loss"), final_eval_loss=last("eval_loss"),
                       final_train_bpb=last("train_bpb"), final_eval_bpb=last("eval_bpb"))
        if cfg.data.eval_unseen:
            summary["final_eval_unseen_loss"] = last("eval_unseen_loss")
    return summary


def start_logging(cfg: Config, rid: str, rd: RunDir, device: torch.device, step: int, keep_upto_step: int | None = None):
    """metrics.jsonl cut back to the checkpoint's step (or keep_upto_step), meta.json, and the wandb
    run (or None)."""
    rd.open_metrics(keep_upto_step=step if keep_upto_step is None else keep_upto_step)
    rd.write_meta(device, resumed_from=step, world_size=distributed.current().world_size)
    return _wandb(cfg, rid, rd)


def record_failure(rd: RunDir, summary: dict, exc: BaseException) -> BaseException:
    """Record a run that failed in summary.json; returns the exception to raise. Interrupted is not
    failed: Ctrl-C, or a SLURM preemption / time limit that submitit answers by requeueing the job and
    exiting. Then no summary is written: the run stays unfinished and the next launch (the requeued
    job, or a relaunched sweep) resumes it from its last checkpoint. That holds as well for a signal
    that landed inside a library's clean-up which then raised an error of its own (torch.save's zip
    writer does: a RuntimeError whose context is the KeyboardInterrupt): that interruption is raised."""
    stop = interruption(exc)
    if stop is not None:
        return stop
    summary.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
    rd.write_summary(summary)
    return exc


def interruption(exc: BaseException) -> BaseException | None:
    """The KeyboardInterrupt or SystemExit that `exc` is, or that it was raised while handling."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


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
