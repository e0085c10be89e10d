"""How much memory a run needs per GPU, and so how many GPUs: the estimate (weights, gradients, AdamW
state, the FSDP working set, low-precision copies, merged MoE experts, activations of one micro-batch
or the RL sampler's KV cache) as this package trains a model on one process or sharded with FSDP2
(lora_lab/distributed.py), where a run fits (`place`, used by sweep's SLURM placement), the
pre-flight check against a GPU's memory, and the `lora-lab gpus` command.

    lora-lab gpus model=llama-3.1-8b method=full data.max_seq_len=4096 gpu_gib=80
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lora_lab.config import ConfigError
from lora_lab.distributed import check_batch

if TYPE_CHECKING:
    from lora_lab.config import Config

GIB = 2**30


# ----------------------------------------------------------------------------- memory estimate

# Kept free of an estimate when GPUs are counted for a run: the CUDA context, the caching allocator's
# fragmentation, NCCL's buffers.
RESERVE_GIB = 4.0
DEFAULT_GPU_GIB = 80.0
_LOW_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class Precision:
    """Bytes per element of what a run keeps, following this package's code paths (learner.py
    build_learner on one process, distributed.py build_sharded on several, lora.py for the adapters)."""

    stored: int  # the base weights; FullFT: the trained (master) weights
    compute: int  # matmul outputs: projections, attention, MLP, logits
    resid: int  # the residual stream and the RMSNorms' outputs
    adapter: int  # LoRA's matmuls: the base's dtype, or 4 (then every adapter keeps an fp32 copy of its input)
    autocast: bool  # FullFT on one process in bf16/fp16: fp32 weights, compute under autocast (models.compute_in)


def precision(method: str, world_size: int = 1, on_gpu: bool = True, dtype: str = "auto") -> Precision:
    """The Precision of a run: `dtype` is model.dtype (auto: bf16 on GPU, fp32 on CPU)."""
    low = dtype in _LOW_DTYPES or (dtype == "auto" and on_gpu)
    c = 2 if low else 4
    if method == "full":
        if world_size > 1:  # fp32 weights on GPU, cast to bf16 for compute by FSDP's MixedPrecisionPolicy
            return Precision(4 if on_gpu else c, c, c, c, False)
        # One process: a low-precision model is kept in fp32 and computes under autocast, and the
        # embeddings' fp32 output keeps the residual stream and the norms in fp32.
        return Precision(4, c, 4, c, low)
    # LoRA: the frozen base in its dtype; fp32 adapters that compute in the base's dtype on GPU (lora.py;
    # FSDP's policy casts them too), in fp32 on one CPU process.
    return Precision(c, c, c, c if on_gpu or world_size > 1 else 4, False)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of one training run: the persistent state (weights, gradients, AdamW's two
    moments; sharded over world_size with FSDP), the FSDP working set (one decoder layer gathered
    and one prefetched, the root's parameters, a layer's gradients before the reduce-scatter),
    low-precision copies of fp32 parameters kept for the backward (`casts`: autocast's weight copies
    for FullFT on one GPU, the adapters cast to the base's dtype for LoRA), the merged expert weights
    W + s B A of every MoE layer (`merged`: LoRA on fused experts; not sharded), and the larger of
    the activations of one micro-batch (not sharded: each rank runs its own) and, for RL, the
    sampler's KV cache (`sampling`). The optimizer's update comes after the backward has freed all
    that: AdamW's foreach temporaries (`step`: 4 bytes per trainable parameter) count only when
    they are the larger."""

    weights: float
    grads: float
    optimizer: float
    gathered: float
    activations: float
    world_size: int
    casts: float = 0.0
    merged: float = 0.0
    sampling: float = 0.0
    step: float = 0.0
    micro_batch: int = 1
    seq_len: int = 0
    checkpointing: bool = False

    @property
    def total(self) -> float:
        backward = self.gathered + self.casts + self.merged + max(self.activations, self.sampling)
        return self.weights + self.grads + self.optimizer + max(backward, self.step)


_COUNTS: dict[tuple, tuple] = {}


def _model_key(model) -> tuple:
    from lora_lab.config import ModelConfig

    if isinstance(model, ModelConfig):
        return (model.name, model.revision, model.trust_remote_code)
    if isinstance(model, (str, Path)):
        return (str(model),)
    return (model.to_json_string(use_diff=False),)


def _counts(model, rank: int, layers: str, unembed: bool, lora: bool) -> tuple:
    """(Arch, tied embeddings, qk-norm, all parameters, LoRA parameters): what flops.py counts on the
    meta device, cached (a sweep asks for a few models many times)."""
    key = (_model_key(model), rank if lora else 0, layers if lora else "", unembed and lora)
    if key not in _COUNTS:
        from lora_lab.flops import Arch, full_param_count, hf_config, lora_param_count

        conf = hf_config(model)
        text = getattr(conf, "text_config", None) or conf
        arch = Arch.of(model)
        n_lora = lora_param_count(model, rank, layers, unembed) if lora else 0
        _COUNTS[key] = (arch, bool(getattr(conf, "tie_word_embeddings", False)), str(text.model_type).startswith("qwen3"),
                        full_param_count(model), n_lora)
    return _COUNTS[key]


def _layer_params(arch, qk_norm: bool = False) -> int:
    """Parameters of the largest decoder layer."""
    h, q, kv = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    attn = h * q + 2 * h * kv + q * h + (2 * arch.head_dim if qk_norm else 0)
    mlp = (3 * h * arch.intermediate if not arch.moe_layers
           else arch.experts * 3 * h * arch.expert_intermediate + h * arch.experts)
    return attn + mlp + 2 * h


def layer_activation_bytes(arch, prec: Precision, method: str, rank: int = 8, layers: str = "all", *,
                           moe: bool = False, padded: bool = True, qk_norm: bool = False) -> float:
    """Bytes one decoder layer keeps for the backward per token, as autograd saves them (measured
    against torch's saved tensors in tests/test_memory.py). Per RMSNorm its fp32 input and rsqrt
    (FullFT: its output too, for the weight's gradient). A linear keeps its input only to train its
    weight: FullFT once per tensor (under autocast, a bf16 copy per linear reading an fp32 tensor);
    LoRA once per tensor where the adapter computes in the input's dtype, else a copy per adapter,
    plus x A (r wide). Attention (SDPA, no score matrix): q, k, v and the output (k and v widened to
    the query heads by transformers' repeat_kv when a padding mask is passed: `padded`), and the
    log-sum-exp; the o_proj input. Dense MLP: gate's output, silu of it, up's output (the product
    is down's input). MoE: the router's fp32 softmax, and per active expert its gathered input, its
    intermediates and its weighted output."""
    h, q, kv = arch.hidden, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    a, res, ad = prec.compute, prec.resid, prec.adapter
    full = method == "full"
    attn_lora = not full and layers in ("attn", "all")
    mlp_lora = not full and layers in ("mlp", "all")

    def inputs(width: int, users: int, src: int, adapted: bool) -> float:
        if full:
            return (1 if src == a else users) * a * width
        if not adapted:
            return 0  # a frozen linear's input gradient needs only its weight
        return (1 if src == ad else users) * ad * width + users * ad * rank

    norm = 4 * h + 4 + (res * h if full else 0)
    kv_kept = q if padded and kv < q else kv
    total = 2 * norm + inputs(h, 3, res, attn_lora)
    if qk_norm:  # Qwen3: RMSNorm of q and k per head
        total += 4 * (q + kv) + 4 * (arch.heads + arch.kv_heads) + (a * (q + kv) if full else 0)
    total += a * (2 * q + 2 * kv_kept) + 4 * arch.heads + inputs(q, 1, a, attn_lora)
    if moe:
        ie = arch.expert_intermediate
        total += (inputs(h, 1, res, False) if full else 0) + 4 * arch.experts
        total += arch.active * a * ((2 * h + 4 * ie) if full or mlp_lora else (h + 3 * ie))
    else:
        total += inputs(h, 2, res, mlp_lora) + 3 * a * arch.intermediate + inputs(arch.intermediate, 1, a, mlp_lora)
    return float(total)


def head_activation_bytes(arch, prec: Precision, method: str, rank: int = 8, unembed: bool = False) -> float:
    """Per token: the final norm, lm_head's input where it trains, and the log-probabilities the
    cross-entropy keeps (fp32, vocabulary wide)."""
    h = arch.hidden
    full = method == "full"
    norm = 4 * h + 4 + (prec.resid * h if full else 0)
    if full:
        lm_in = prec.compute * h
    elif unembed:
        lm_in = (prec.adapter if prec.adapter != prec.resid else prec.resid) * h + prec.adapter * rank
    else:
        lm_in = 0
    return float(norm + lm_in + 4 * arch.vocab)


def activation_bytes(arch, prec: Precision, method: str, rank: int = 8, layers: str = "all", *, seq_len: int,
                     micro_batch: int = 1, checkpointing: bool = False, unembed: bool = False, padded: bool = True,
                     qk_norm: bool = False, loss_len: int | None = None) -> float:
    """Activation memory of one micro-batch at its peak, the start of the backward: what every layer
    keeps (with activation checkpointing: each layer's input, and one layer's activations while it
    is recomputed), the padding mask (seq_len^2 per sequence), and at the loss_len positions per
    sequence that reach the unembedding (default seq_len, an upper bound: SFT unembeds target
    positions only; RL its completion tokens) the head and the loss's backward (the gradients of the
    log-probabilities and of the logits in fp32: 8 bytes per vocabulary entry)."""
    per = [layer_activation_bytes(arch, prec, method, rank, layers, moe=i in arch.moe_layers, padded=padded,
                                  qk_norm=qk_norm) for i in range(arch.layers)]
    kept = prec.resid * arch.hidden * arch.layers + max(per) if checkpointing else sum(per)
    head = head_activation_bytes(arch, prec, method, rank, unembed) + 8 * arch.vocab
    mask = micro_batch * seq_len ** 2 * prec.compute if padded else 0
    return float(micro_batch * (seq_len * kept + (seq_len if loss_len is None else loss_len) * head) + mask)


def memory_estimate(model, method: str = "full", rank: int = 8, layers: str = "all", *, seq_len: int = 2048,
                    micro_batch: int = 1, world_size: int = 1, checkpointing: bool = False, on_gpu: bool = True,
                    dtype: str = "auto", unembed: bool = False, padded: bool = True, loss_len: int | None = None,
                    sample_rows: int = 0, sample_len: int = 0) -> MemoryEstimate:
    """Bytes per GPU of a LoRA or FullFT run of `model` (anything lora_lab.flops.Arch takes) on
    world_size GPUs, as this package trains it (`precision` gives the dtypes of each path).
    sample_rows x sample_len: an RL sampler's batch, whose KV cache is counted against the
    activations (the two are not held at once). `estimate_for` takes these from a config."""
    if method not in ("lora", "full"):
        raise ConfigError(f"method={method!r}: choose lora or full")
    if world_size < 1 or micro_batch < 1 or seq_len < 1:
        raise ConfigError(f"world_size={world_size}, micro_batch={micro_batch}, seq_len={seq_len}: each must be >= 1")
    arch, tied, qk_norm, n_all, n_lora = _counts(model, rank, layers, unembed, method == "lora")
    prec = precision(method, world_size, on_gpu, dtype)
    w, c = world_size, prec.compute
    h, vocab = arch.hidden, arch.vocab
    full = method == "full"
    if full:
        weights, grads, optimizer = prec.stored * n_all / w, prec.stored * n_all / w, 2 * prec.stored * n_all / w
        # autocast keeps a bf16 copy of every weight a matmul reads (not the embedding lookup's).
        casts = 2 * (n_all - (0 if tied else vocab * h)) if prec.autocast else 0
    else:
        weights, grads, optimizer = (prec.stored * n_all + 4 * n_lora) / w, 4 * n_lora / w, 8 * n_lora / w
        casts = 2 * n_lora if w == 1 and prec.adapter == 2 else 0  # A and B cast to the base's dtype
    layer = _layer_params(arch, qk_norm)
    gathered = 0.0
    if w > 1:
        root = vocab * h * (1 if tied else 2) + h
        reduce = c + (4 if c != 4 else 0)  # a layer's gradients, and their fp32 copy for the reduce-scatter
        grad_set = max(layer, vocab * h) if full else n_lora / arch.layers
        gathered = 2 * c * layer + c * root + reduce * grad_set
    merged = 0.0
    if not full and layers in ("mlp", "all") and arch.moe_layers:
        experts = arch.experts * 3 * h * arch.expert_intermediate  # one layer's fused expert weights
        # W + s B A of every MoE layer, kept for the backward; one layer's merge and its gradient in flight.
        merged = c * experts * len(arch.moe_layers) + experts * (2 * c + (8 if prec.adapter == 4 else 0))
    acts = activation_bytes(arch, prec, method, rank, layers, seq_len=seq_len, micro_batch=micro_batch,
                            checkpointing=checkpointing, unembed=unembed, padded=padded, qk_norm=qk_norm,
                            loss_len=loss_len)
    kv = arch.kv_heads * arch.head_dim
    # The sampler's KV cache, and the fp32 logits of one decoding step.
    sampling = sample_rows * (sample_len * arch.layers * 2 * kv * c + 4 * vocab) if sample_rows else 0.0
    step = 4 * (n_all if full else n_lora) / w  # torch's AdamW: sqrt(v) + eps for every parameter at once
    return MemoryEstimate(float(weights), float(grads), float(optimizer), float(gathered), float(acts), w,
                          float(casts), float(merged), float(sampling), float(step), micro_batch, seq_len,
                          checkpointing)


def run_shape(cfg: "Config", world_size: int = 1) -> dict:
    """What a run of this config puts through the model at once, as the loops do it: the
    micro-batch (SFT: optim.micro_for; RL: optim.micro_batch_size or the largest divisor up to 8
    of an update's completions), the sequence length (RL: prompt + completion, the completion alone
    reaching the unembedding), activation checkpointing, and for RL the sampler's batch
    (rl.sample_batch rows, whole groups; none with rl.sampler=vllm, whose memory is its own share of
    the GPU)."""
    if cfg.task == "rl":
        rl = cfg.rl
        n = rl.prompts_per_step * rl.group_size // rl.updates_per_batch
        micro = cfg.optim.micro_batch_size or max(d for d in range(1, min(8, n) + 1) if n % d == 0)
        seq = cfg.data.max_seq_len + rl.max_new_tokens
        rows = 0 if rl.sampler == "vllm" else max(1, rl.sample_batch // rl.group_size) * rl.group_size
        longest = cfg.data.max_seq_len + max(rl.max_new_tokens, rl.eval_max_new_tokens or 0)
        return dict(micro_batch=micro, seq_len=seq, checkpointing=cfg.dist.activation_checkpointing,
                    loss_len=rl.max_new_tokens, sample_rows=rows, sample_len=longest)
    return dict(micro_batch=cfg.optim.micro_for(world_size), seq_len=cfg.data.max_seq_len,
                checkpointing=cfg.dist.activation_checkpointing)


def estimate_for(cfg: "Config", world_size: int = 1, on_gpu: bool = True, **shape) -> MemoryEstimate:
    """memory_estimate of a config as it will run on world_size GPUs (`run_shape`; keyword arguments
    override it: micro_batch=, seq_len=, checkpointing=, sample_rows=)."""
    kw = {**run_shape(cfg, world_size), **{k: v for k, v in shape.items() if v is not None}}
    return memory_estimate(cfg.model, cfg.method, cfg.lora.rank, cfg.lora.layers, world_size=world_size,
                           on_gpu=on_gpu, dtype=cfg.model.dtype, unembed=cfg.lora.unembed and cfg.method == "lora", **kw)


def gpu_budget(cfg: "Config", gpu_bytes: float) -> float:
    """The part of a GPU of gpu_bytes the learner may use: all of it, less vLLM's share when an RL
    run samples with vLLM on the same GPU (rl.vllm_gpu_memory)."""
    if cfg.task == "rl" and cfg.rl.sampler == "vllm":
        return gpu_bytes * (1 - cfg.rl.vllm_gpu_memory)
    return gpu_bytes


def gpus_needed(model, method: str = "full", rank: int = 8, layers: str = "all", *, gpu_gib: float = DEFAULT_GPU_GIB,
                reserve_gib: float = RESERVE_GIB, max_gpus: int = 1024, **kw) -> tuple[int | None, MemoryEstimate]:
    """The smallest power-of-two number of GPUs of gpu_gib each whose per-GPU estimate fits in
    gpu_gib - reserve_gib; None if none up to max_gpus does. Also the estimate at that size (or at
    max_gpus)."""
    w = 1
    while True:
        est = memory_estimate(model, method, rank, layers, world_size=w, **kw)
        if est.total <= (gpu_gib - reserve_gib) * GIB:
            return w, est
        if w >= max_gpus:
            return None, est
        w *= 2


# ----------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Where a run goes: GPUs per node and nodes (one process per GPU), its estimate there, and
    whether that fits the GPUs (`why`: what to change when it does not)."""

    gpus_per_node: int
    nodes: int
    estimate: MemoryEstimate
    fits: bool
    chosen: str  # "arm": set by the experiment's arm; "auto": from the memory estimate
    why: str = ""

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes


def _world_ok(cfg: "Config", world: int) -> bool:
    if cfg.task == "rl":
        return world == 1  # task=rl runs on one process
    try:
        check_batch(cfg.optim.batch_size, cfg.optim.micro_batch_size, world)
    except ConfigError:
        return False
    return True


def place(cfg: "Config", gpu_gib: float = DEFAULT_GPU_GIB, *, min_gpus: int = 1, max_gpus_per_node: int = 8,
          max_nodes: int = 1, gpus_per_node: int | None = None, nodes: int | None = None,
          reserve_gib: float = RESERVE_GIB) -> Placement:
    """GPUs for one run on GPUs of gpu_gib each. gpus_per_node / nodes set: those. Else the
    smallest that fits gpu_gib - reserve_gib: min_gpus, then powers of two up to max_gpus_per_node
    on one node, then 2, 4, ... whole nodes up to max_nodes; a count must split optim.batch_size
    into whole micro-batches, and task=rl runs on one GPU."""
    budget = gpu_budget(cfg, gpu_gib * GIB) - reserve_gib * GIB
    if gpus_per_node is not None or nodes is not None:
        g, n = gpus_per_node or 1, nodes or 1
        est = estimate_for(cfg, g * n)
        fits = est.total <= budget and _world_ok(cfg, g * n)
        return Placement(g, n, est, fits, "arm", "" if fits else _why(cfg, est, budget, g * n))
    candidates, g = [], max(1, min_gpus)
    while g <= max(max_gpus_per_node, min_gpus):
        candidates.append((g, 1))
        g *= 2
    n = 2
    while n <= max_nodes:
        candidates.append((max(max_gpus_per_node, min_gpus), n))
        n *= 2
    candidates = [(g, n) for g, n in candidates if _world_ok(cfg, g * n)] or [(1, 1)]
    est = None
    for g, n in candidates:
        est = estimate_for(cfg, g * n)
        if est.total <= budget:
            return Placement(g, n, est, True, "auto")
    g, n = candidates[-1]
    return Placement(g, n, est, False, "auto", _why(cfg, est, budget, g * n))


def _why(cfg: "Config", est: MemoryEstimate, budget: float, world: int) -> str:
    need = f"~{est.total / GIB:.1f} GiB per GPU on {world} GPU(s) > {budget / GIB:.1f} GiB"
    if cfg.task == "rl":
        need += " (task=rl runs on one GPU)"
    return f"{need}; {fixes(cfg, world, budget)}"


def fixes(cfg: "Config", world: int, budget: float) -> str:
    """What makes a run fit `budget` bytes per GPU, in words: a smaller optim.micro_batch_size (RL:
    and rl.sample_batch) if one does; else activation checkpointing, or (SFT) more GPUs, the first
    that works of each."""
    shape = run_shape(cfg, world)
    out = []
    micro, ckpt = shape["micro_batch"], shape["checkpointing"]
    smaller = [m for m in range(micro - 1, 0, -1) if micro % m == 0]
    rows = [None]
    if shape.get("sample_rows"):  # RL: whole groups, halving
        group, r = cfg.rl.group_size, shape["sample_rows"]
        rows += [n for n in (r // 2 ** i for i in range(1, 12)) if n >= group and n % group == 0]

    def first(micros: list[int], checkpointing: bool | None) -> tuple[int, int | None] | None:
        for n in rows:
            for m in micros:
                if estimate_for(cfg, world, micro_batch=m, checkpointing=checkpointing, sample_rows=n).total <= budget:
                    return m, n
        return None

    def keys(m: int, n: int | None, checkpointing: bool = False) -> str:
        out = (["dist.activation_checkpointing=true"] if checkpointing else []) + (
            [f"optim.micro_batch_size={m}"] if m != micro else []) + ([f"rl.sample_batch={n}"] if n else [])
        return " ".join(out)

    fit = first(smaller, None) or (first([micro], None) if len(rows) > 1 else None)
    if fit:
        return "set " + keys(*fit)  # the cheapest fix: nothing recomputed, no more GPUs
    if not ckpt:
        fit = first([micro, *smaller], True)
        if fit:
            out.append("set " + keys(*fit, checkpointing=True))
    if cfg.task != "rl":
        more = _more_gpus(cfg, world, budget)
        if more:
            w, m = more
            with_micro = f" with optim.micro_batch_size={m}" if m != run_shape(cfg, w)["micro_batch"] else ""
            out.append(f"run on {w} GPUs{with_micro} (launcher.gpus_per_node / launcher.nodes in the experiment's "
                       f"arm, or torchrun)")
    return ", or ".join(out) if out else "no micro-batch, checkpointing or GPU count makes it fit"


def _more_gpus(cfg: "Config", world: int, budget: float) -> tuple[int, int] | None:
    """The fewest GPUs (powers of two above world) on which the run fits at its micro-batch or a
    smaller divisor of it, and that micro-batch."""
    w = world * 2
    while w <= 1024:
        if _world_ok(cfg, w):
            micro = run_shape(cfg, w)["micro_batch"]
            for m in [d for d in range(micro, 0, -1) if micro % d == 0]:
                if estimate_for(cfg, w, micro_batch=m).total <= budget:
                    return w, m
        w *= 2
    return None


def device_memory(index: int = 0) -> int:
    """Total memory in bytes of CUDA device `index` (the pre-flight compares the estimate with it)."""
    return torch.cuda.get_device_properties(index).total_memory


def check_memory(cfg: "Config", world_size: int, device_bytes: float) -> None:
    """ConfigError (one line: the estimate, the GPU's memory, what to set) when the estimate of this
    run on world_size GPUs exceeds the GPU's memory (less vLLM's share for rl.sampler=vllm). A model
    the estimate does not know (not a Llama/Qwen-style decoder) is not checked: a note on stderr."""
    from lora_lab.flops import Arch

    try:
        Arch.of(cfg.model)
    except ConfigError as exc:
        print(f"memory check skipped: {exc}", file=sys.stderr)
        return
    est = estimate_for(cfg, world_size)
    budget = gpu_budget(cfg, device_bytes)
    if est.total <= budget:
        return
    micro = run_shape(cfg, world_size)["micro_batch"]
    what = f"{cfg.model.name} {'FullFT' if cfg.method == 'full' else f'LoRA r{cfg.lora.rank} {cfg.lora.layers}'}"
    raise ConfigError(
        f"optim.micro_batch_size={micro}: {what} needs ~{est.total / GIB:.1f} GiB per GPU on "
        f"{world_size} process(es) at {micro} x {est.seq_len} tokens per micro-batch (activation checkpointing "
        f"{'on' if est.checkpointing else 'off'}), the GPU has {budget / GIB:.1f} GiB; {fixes(cfg, world_size, budget)} "
        f"(`lora-lab gpus` shows the estimate; dist.memory_check=false runs it anyway)")


GPUS_USAGE = """usage: lora-lab gpus [key=value ...] [gpu_gib=80] [seq_len=N] [micro_batch=N] [checkpointing=true]

How many GPUs a run needs: the per-GPU memory estimate (weights, gradients, AdamW state, FSDP working
set, low-precision copies, merged MoE experts, activations of one micro-batch or the RL sampler's KV
cache) at 1, 2, 4, ... GPUs, and the smallest count that fits. Other arguments are run overrides
(model=, method=, lora.rank=, lora.layers=, optim.micro_batch_size=, data.max_seq_len=,
dist.activation_checkpointing=true, +experiments=paper/...): the run as it will be launched, its
micro-batch at each GPU count included.

    lora-lab gpus model=llama-3.1-8b method=full data.max_seq_len=2048
"""


def gpus_main(argv: list[str]) -> int:
    """`lora-lab gpus`: the memory table for a config."""
    from lora_lab.config import compose

    if any(a in ("-h", "--help") for a in argv):
        print(GPUS_USAGE, end="")
        return 0
    keys = {"gpu_gib": float, "seq_len": int, "micro_batch": int, "reserve_gib": float,
            "checkpointing": lambda v: v.lower() in ("1", "true", "yes")}
    opts, overrides = {}, []
    for a in argv:
        k, eq, v = a.partition("=")
        if eq and k in keys:
            try:
                opts[k] = keys[k](v)
            except ValueError:
                raise ConfigError(f"{a}: not a valid {k} (see lora-lab gpus --help)") from None
        else:
            overrides.append(a)
    cfg = compose(overrides)
    shape = {k: opts.get(k) for k in ("seq_len", "micro_batch", "checkpointing")}
    gpu_gib, reserve = opts.get("gpu_gib", DEFAULT_GPU_GIB), opts.get("reserve_gib", RESERVE_GIB)
    one = estimate_for(cfg, 1, **shape)
    what = f"{cfg.model.name} {cfg.method}" + (f" r={cfg.lora.rank} {cfg.lora.layers}" if cfg.method == "lora" else "")
    print(f"{what}: {one.seq_len} tokens per sequence, activation checkpointing {'on' if one.checkpointing else 'off'}, "
          f"model.dtype={cfg.model.dtype}; GiB per GPU")
    print(f"{'GPUs':>5}{'micro':>6}{'weights':>9}{'grads':>8}{'AdamW':>8}{'FSDP':>7}{'copies':>8}{'merged':>8}"
          f"{'activ.':>8}{'sampler':>8}{'total':>8}")
    budget = gpu_budget(cfg, gpu_gib * GIB) - reserve * GIB
    w, found = 1, None
    while w <= 64:
        if _world_ok(cfg, w):
            e = estimate_for(cfg, w, **shape)
            cells = (e.weights, e.grads, e.optimizer, e.gathered, e.casts, e.merged, e.activations, e.sampling, e.total)
            widths = (9, 8, 8, 7, 8, 8, 8, 8, 8)
            print(f"{w:>5}{e.micro_batch:>6}" + "".join(f"{x / GIB:>{n}.1f}" for x, n in zip(cells, widths)))
            if found is None and e.total <= budget:
                found = (w, e)
        w *= 2
    if found is None:
        print(f"fits no GPU count up to 64 of {gpu_gib:g} GiB ({reserve:g} GiB kept free): "
              f"{fixes(cfg, 64 if cfg.task != 'rl' else 1, budget)}")
    else:
        print(f"needs {found[0]} GPU(s) of {gpu_gib:g} GiB ({found[1].total / GIB:.1f} GiB each, {reserve:g} GiB kept free)")
    if found is None or found[0] > 1:
        print(f"on one GPU: {fixes(cfg, 1, budget)}")
    return 0
