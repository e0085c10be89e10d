"""A GPU's first contact with the paper's scale, in under 10 minutes on one H100/H200-class GPU:

- a LoRA r256 (all layers) step and a FullFT step (fp32 master weights, bf16 compute: what
  `models.compute_in` gives a bf16 FullFT run on one GPU) on a Llama-3.1-8B-shaped model at full
  width (hidden 4096, 32 heads, 8 KV heads, MLP 14336, vocabulary 128256) with fewer layers
  (`--layers`, default 8: FullFT's 18 bytes a parameter must fit one GPU), random weights, built on
  the meta device and materialized on the GPU: the median step time after warm-up, the peak memory
  (torch.cuda.max_memory_allocated) against lora_lab.memory.memory_estimate for the same
  shape, and the MFU (lora_lab.flops FLOPs / step time / the device's dense bf16 peak);
- the fp32-master check: bf16 FullFT at lr 3e-5 drops tiny-llama's loss about as far as fp32
  (experiments/bf16_master.py's `drop`);
- FSDP2 on two processes over NCCL (a short tiny-llama FullFT run under torchrun), when 2 GPUs exist;
- the vLLM sampler (a two-step tiny RL run with rl.sampler=vllm), when vLLM is importable.

It writes one JSON file and prints a markdown table to paste into experiments/LOG.md. `--tiny` runs
the same code on tiny-llama on the CPU, in seconds (no CUDA memory or MFU there: None).

    python experiments/gpu_smoke.py                       # runs/gpu_smoke/<time>.json
    python experiments/gpu_smoke.py --layers 4 --out smoke.json
    python experiments/gpu_smoke.py --tiny                # this CPU, the same code on tiny-llama
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from lora_lab import flops, memory
from lora_lab.config import LoraConfig, ModelConfig
from lora_lab.data import IGNORE_INDEX
from lora_lab.lora import apply_lora, lora_parameters
from lora_lab.models import compute_in, model_config
from lora_lab.train import batch_nll

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bf16_master import drop  # noqa: E402

GIB = 2**30


def device_peak_tflops(name: str) -> float | None:
    """Dense bf16 peak of a device by its name (lora_lab.flops.GPU_PEAK_TFLOPS: H100, H200, A100)."""
    low = name.lower()
    return next((v for k, v in flops.GPU_PEAK_TFLOPS.items() if k in low), None)


def build(conf, device: torch.device, dtype: torch.dtype):
    """The model of `conf` on the meta device, materialized on `device` with random weights (normal
    0.02, norms 1) and its rotary tables recomputed."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(conf, dtype=dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02, generator=gen)
            else:
                p.fill_(1.0)
    for name, module in list(model.named_modules()):
        if name.endswith("rotary_emb"):  # non-persistent buffers: meta after to_empty
            parent, _, leaf = name.rpartition(".")
            fresh = type(module)(module.config).to(device)
            setattr(model.get_submodule(parent) if parent else model, leaf, fresh)
    model.config.use_cache = False
    model.train()
    return model


def batch(vocab: int, micro: int, seq: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random tokens, padded as a training micro-batch is (the last 8 positions of row 0)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (micro, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -8:] = 0
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def step_check(conf, method: str, rank: int, micro: int, seq: int, device: torch.device, warmup: int,
               steps: int) -> dict:
    """Build, then time optimizer steps of one micro-batch; peak memory against the estimate."""
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32  # model.dtype=auto
    model = build(conf, device, dtype)
    if method == "lora":
        apply_lora(model, LoraConfig(rank=rank, layers="all"))
        params = [p for _, p in lora_parameters(model)]
    else:
        if model.dtype in (torch.bfloat16, torch.float16):  # as learner.build_learner does on one process
            compute_in(model, model.dtype)
            model.float()
        model.requires_grad_(True)
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-12)
    b = batch(conf.vocab_size, micro, seq, device)
    n_target = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())

    def one() -> float:
        if on_gpu:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        nll, _ = batch_nll(model, b)
        (nll / n_target).backward()
        opt.step()
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    losses = []
    for _ in range(warmup):
        one()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    times = [one() for _ in range(steps)]
    with torch.no_grad():
        losses.append(float(batch_nll(model, b)[0]) / n_target)
    peak = torch.cuda.max_memory_allocated(device) if on_gpu else None
    est = memory.memory_estimate(conf, method, rank, "all", seq_len=seq, micro_batch=micro, world_size=1,
                                      on_gpu=on_gpu, padded=True)
    step = statistics.median(times)
    tokens = micro * seq
    f = flops.flops_per_token(conf, method, rank, "all", seq).total * tokens
    tflops = device_peak_tflops(torch.cuda.get_device_name(device)) if on_gpu else None
    out = {"method": method, "rank": rank if method == "lora" else None, "micro_batch": micro, "seq_len": seq,
           "params": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in params),
           "step_s": step, "step_s_all": times, "loss": losses[-1],
           "peak_gib": None if peak is None else peak / GIB, "estimate_gib": est.total / GIB,
           "estimate": {k: getattr(est, k) / GIB for k in ("weights", "grads", "optimizer", "gathered", "casts",
                                                          "merged", "activations", "step")},
           "peak_over_estimate": None if peak is None else peak / est.total,
           "flops_per_step": f, "achieved_tflops": f / step / 1e12,
           "mfu": None if tflops is None else f / step / (tflops * 1e12)}
    return out  # the model and its optimizer go with this frame


def master_check(tiny: bool, root: str) -> dict:
    """bf16 FullFT (fp32 master weights, bf16 compute) against fp32 at lr 3e-5: the loss drops."""
    # bf16_master.py's setting; --tiny: 12 steps of 16 (0.98x on the 2-core CPU, 6 steps are too few to tell).
    steps = 12 if tiny else 16
    common = ["method=full", "optim.lr=3e-5", f"data.num_examples={192 if tiny else 512}",
              f"optim.batch_size={16 if tiny else 32}", f"train.max_steps={steps}", "data.max_seq_len=64",
              "train.eval_every=0", "train.checkpoint_every=0", "logger.progress=none"]
    fp32 = drop([*common, "model.dtype=float32"], f"{root}/fp32")
    bf16 = drop([*common, "model.dtype=bfloat16"], f"{root}/bf16")
    ratio = bf16 / fp32 if fp32 else None
    return {"steps": steps, "lr": 3e-5, "fp32_drop": fp32, "bf16_master_drop": bf16, "ratio": ratio,
            "ok": ratio is not None and 0.8 <= ratio <= 1.25}


def _run(cmd: list[str], timeout: int) -> tuple[int, float, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        rc, tail = p.returncode, (p.stderr.strip().splitlines() or [""])[-1]
    except subprocess.TimeoutExpired:
        rc, tail = 124, f"timed out after {timeout} s"
    return rc, time.monotonic() - t0, tail[-300:]


def fsdp_check(root: str) -> dict:
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return {"status": "skipped", "why": f"{n} GPU(s); FSDP2 over NCCL needs 2"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "lora_lab", "train", "method=full", "optim.lr=1e-4", "train.max_steps=8", "data.num_examples=256",
           "optim.batch_size=16", "data.max_seq_len=128", "train.eval_every=4", "train.checkpoint_every=4",
           "train.device=cuda", "logger.progress=none", f"run.root={root}"]
    rc, secs, tail = _run(cmd, 180)
    return {"status": "ok" if rc == 0 else "failed", "rc": rc, "wall_s": secs, "last_line": tail}


def vllm_check(root: str) -> dict:
    import importlib

    try:
        importlib.import_module("vllm")
        importlib.import_module("lora_lab.vllm_sampler")
    except Exception as exc:  # noqa: BLE001 - not installed, or a sampler that does not import yet
        return {"status": "skipped", "why": f"not importable ({type(exc).__name__}: {str(exc)[:120]})"}
    if not torch.cuda.is_available():
        return {"status": "skipped", "why": "no CUDA device"}
    cmd = [sys.executable, "-m", "lora_lab", "train", "task=rl", "data=tiny-math", "rl.sampler=vllm", "lora.rank=8",
           "optim.lr=1e-4", "train.max_steps=2", "rl.prompts_per_step=4", "rl.group_size=4", "rl.sample_batch=16",
           "rl.max_new_tokens=16", "data.eval_size=8", "train.eval_every=0", "train.checkpoint_every=0",
           "logger.progress=none", f"run.root={root}"]
    rc, secs, tail = _run(cmd, 240)
    return {"status": "ok" if rc == 0 else "failed", "rc": rc, "wall_s": secs, "last_line": tail}


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _size(gib: float | None) -> str:
    if gib is None:
        return "n/a"
    return f"{gib:.1f} GiB" if gib >= 1 else f"{gib * 1024:.1f} MiB"


def table(r: dict) -> str:
    shape = r["shape"]
    lines = [f"GPU smoke ({r['date']}, {r['device']}, torch {r['torch']}): {shape['name']} shape, "
             f"{shape['layers']} layers, {r['micro_batch']} x {r['seq_len']} tokens per step",
             "", "| check | result |", "|---|---|"]
    full = "FullFT, fp32 master + bf16 compute" if r["device"] != "cpu" else "FullFT, fp32"
    for key, label in (("lora", f"LoRA r{r['lora']['rank']} all layers"), ("full", full)):
        c = r[key]
        vs = f" ({c['peak_over_estimate']:.2f}x)" if c["peak_over_estimate"] is not None else ""
        mfu = f"MFU {100 * c['mfu']:.1f}%" if c["mfu"] is not None else "MFU n/a"
        lines.append(f"| {label} step | {c['step_s'] * 1e3:.0f} ms (median of {len(c['step_s_all'])}); peak "
                     f"{_size(c['peak_gib'])} vs estimate {_size(c['estimate_gib'])}{vs}; "
                     f"{c['achieved_tflops']:.3g} TFLOP/s, {mfu} |")
    m = r["bf16_master"]
    lines.append(f"| bf16 FullFT loss drop / fp32 ({m['steps']} steps, lr {m['lr']:g}) | {_num(m['ratio'], '.2f')}x "
                 f"({m['bf16_master_drop']:.3f} vs {m['fp32_drop']:.3f} nats){'' if m['ok'] else ' NOT OK'} |")
    for key, label in (("fsdp2", "FSDP2, 2 processes, NCCL"), ("vllm", "vLLM sampler, 2 RL steps")):
        c = r[key]
        detail = c.get("why") or f"rc {c['rc']} in {c['wall_s']:.0f} s: {c['last_line']}"
        lines.append(f"| {label} | {c['status']}: {detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny-llama on the CPU: the same code, in seconds")
    p.add_argument("--layers", type=int, default=8, help="decoder layers of the 8B-shaped model (32: the whole)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default 256; --tiny: 8)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per step (default 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 2048; --tiny: 64)")
    p.add_argument("--steps", type=int, default=None, help="timed steps after warm-up (default 5; --tiny: 3)")
    p.add_argument("--out", type=Path, default=None, help="the JSON file (default runs/gpu_smoke/<time>.json)")
    a = p.parse_args(argv)
    t0 = time.monotonic()
    tiny = a.tiny or not torch.cuda.is_available()
    if tiny and not a.tiny:
        print("no CUDA device: running --tiny", file=sys.stderr)
    device = torch.device("cpu" if tiny else "cuda")
    if tiny:
        conf, name = model_config(ModelConfig(name="tiny-llama")), "tiny-llama"
    else:
        conf, name = flops.hf_config("llama-3.1-8b"), "Llama-3.1-8B"
        conf = conf.__class__.from_dict({**conf.to_dict(), "num_hidden_layers": a.layers})
    rank = a.rank or (8 if tiny else 256)
    micro, seq = a.micro_batch or 2, a.seq_len or (64 if tiny else 2048)
    steps, warmup = a.steps or (3 if tiny else 5), 1 if tiny else 2
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = a.out or Path("runs") / "gpu_smoke" / f"{stamp}.json"
    result = {"date": stamp, "tiny": tiny, "device": "cpu" if tiny else torch.cuda.get_device_name(0),
              "torch": torch.__version__, "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
              "shape": {"name": name, "layers": conf.num_hidden_layers, "hidden": conf.hidden_size,
                        "vocab": conf.vocab_size}, "micro_batch": micro, "seq_len": seq}
    for method in ("lora", "full"):
        result[method] = step_check(conf, method, rank, micro, seq, device, warmup, steps)
        if not tiny:
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as root:
        result["bf16_master"] = master_check(tiny, f"{root}/master")
        result["fsdp2"] = fsdp_check(f"{root}/fsdp")
        result["vllm"] = vllm_check(f"{root}/vllm")
    result["wall_s"] = time.monotonic() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\n{out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
