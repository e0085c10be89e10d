"""The model arithmetic behind `lora-lab plan`: the model lookup, LoRA parameter counts, matmul
FLOPs per token of a LoRA or FullFT training step (claim C6), the size of a run, and GPU peaks.

A model is named as anything `lora-lab train` accepts (a tiny preset, a conf/model preset such as
llama-3.1-8b, a hub id, a local directory or config.json) or given as a transformers config.
Hub ids of the paper's models work offline: when the hub cannot be reached (or refuses, as for
gated Llama repositories without a token) and the id is not in the local cache, the config.json
shipped in lora_lab/assets/hf_configs/<org>__<name>/ is used (public architecture numbers).

Parameter counts build the model on the meta device (shapes, no weights) and apply
lora_lab.lora.apply_lora to it, so they are what a run trains: r (d_in + d_out) per adapted matrix;
MoE experts one adapter each at per-expert rank = rank / active experts (the paper's rule), the
fused Qwen3-MoE gate/up projection with one A (as peft's `target_parameters` does). The paper's
Llama-3.1-8B table counts the unembedding adapter too (tests/test_plan.py).

FLOPs count the matmuls of one training step, per token, split into forward, input-gradient and
weight-gradient parts (2 FLOPs per multiply-add). A linear d_in -> d_out costs 2 d_in d_out forward,
the same again for the gradient of its input and for the gradient of its weight. LoRA of rank r on
it adds 2 r (d_in + d_out) forward and, backward, dB (2 r d_out), the gradient into x A (2 r d_out),
dA (2 r d_in) and the gradient into x through A (2 r d_in); the frozen base still pays its
input-gradient but no weight-gradient. For square N x N matrices with LoRA on all of them that gives
the paper's ratio (2N^2 + 6NR) / 3N^2 ("LoRA Without Regret", section on compute efficiency):
`paper_flops_ratio`. A part of the network with no trainable parameter upstream needs no input
gradient (autograd skips it: with LoRA, the first layer before the first adapter), as counted here.
Attention scores and values cost 4 s h d_head per token forward (s: sequence length, every query
against all s keys, the convention of PaLM's MFU, Chowdhery et al. 2022, appendix B; causal kernels
skip about half) and twice that backward. MoE layers count the router and the active experts; expert
LoRA is counted as applied per token, with per-expert rank = rank / active experts.

RL also samples (`sampling_flops`, `rl_sampling_cost`): forward passes only, with a KV cache. A
prompt of P tokens is prefilled once (unembedding its last position only), for the whole group
where the samples share it (lora_lab's cached loop; vLLM's prefix cache) or once per sample
(transformers' generate); then each generated token but the last is fed once, at ~2 x the matmul
parameters (LoRA's adapter matmuls included: samplers run the adapter unmerged) plus attention to
the cached keys (P + G/2 on average over G new tokens). G is rl.max_new_tokens, an upper bound:
completions that stop earlier cost less. Held-out greedy evaluation is counted the same way.

    python -m lora_lab.flops llama-3.1-8b 256 2048     # FLOPs per token: LoRA r=256 vs FullFT
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from lora_lab import hub
from lora_lab.config import CONF_DIR, ConfigError, LoraConfig, ModelConfig

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig

    from lora_lab.config import Config

HF_CONFIGS = Path(__file__).resolve().parent / "assets" / "hf_configs"

# Dense bf16 tensor-core peak (without 2:4 sparsity), TFLOPS, from NVIDIA's data sheets: H100 SXM5
# 989 (NVIDIA H100 Tensor Core GPU data sheet, "BF16 Tensor Core 1,979 teraFLOPS*", *with sparsity),
# H200 SXM 989 (H200 data sheet, same 1,979 with sparsity), A100 SXM 312 (A100 data sheet, 624 with
# sparsity).
GPU_PEAK_TFLOPS = {"h100": 989.0, "h200": 989.0, "a100": 312.0}

ModelLike = Union["PretrainedConfig", ModelConfig, str, Path]


# ----------------------------------------------------------------------------- model lookup


def shipped_config(hub_id: str) -> Path | None:
    """lora_lab/assets/hf_configs/<org>__<name>/config.json for a hub id, if shipped."""
    path = HF_CONFIGS / hub_id.replace("/", "__") / "config.json"
    return path if path.exists() else None


def _preset_name(name: str) -> str | None:
    """conf/model/<name>.yaml -> its `name` (a hub id), for `model=llama-3.1-8b` style names."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if "/" in name or not path.exists():
        return None
    from omegaconf import OmegaConf

    return str(OmegaConf.load(path).get("name") or "") or None


def hf_config(model: ModelLike) -> PretrainedConfig:
    """The transformers config of a model, without weights and, where possible, without network."""
    from transformers import PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model
    if isinstance(model, ModelConfig):
        return _lookup(model.name, model.trust_remote_code, model.revision)
    return _lookup(str(model), False, None)


@lru_cache(maxsize=64)
def hidden_size(model: str) -> int | None:
    """A model's hidden size: a tiny preset's from its config dict (no transformers import), else
    through Arch; None where the model cannot be looked up (an unknown or offline hub model: the
    analyses leave its width out rather than fail)."""
    from lora_lab.tiny.presets import TINY_CONFIGS

    if model in TINY_CONFIGS:
        return int(TINY_CONFIGS[model]["hidden_size"])
    try:
        return int(Arch.of(model).hidden)
    except Exception:  # noqa: BLE001 - see above
        return None


@lru_cache(maxsize=64)
def _lookup(name: str, trust_remote_code: bool, revision: str | None) -> PretrainedConfig:
    from transformers import AutoConfig

    from lora_lab.models import model_config
    from lora_lab.tiny.presets import TINY_CONFIGS

    if name in TINY_CONFIGS:
        return model_config(ModelConfig(name=name))
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".json":
            raise ConfigError(f"model={name}: not a config.json; give a config.json, a model directory or a hub id")
        return AutoConfig.from_pretrained(str(path))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(f"model={name}: directory has no config.json")
        return AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    preset = _preset_name(name)
    if preset:
        return _lookup(preset, trust_remote_code, revision)
    ModelConfig(name=name)  # validates the hub-id form with the usual one-line message
    shipped = shipped_config(name)
    # The project's one hub-reachability check: no 30 s of retries on an air-gapped node.

    try:
        if hub.offline():
            return AutoConfig.from_pretrained(name, revision=revision, local_files_only=True,
                                              trust_remote_code=trust_remote_code)
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        if shipped is not None:
            return AutoConfig.from_pretrained(str(shipped))
        raise ConfigError(f"model={name}: config not available ({str(exc).splitlines()[0][:120]}); "
                          f"give a local config.json or model directory") from None


# ----------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Arch:
    """The matmul shapes of a decoder-only transformer, read from its config."""

    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    experts: int = 0  # 0: dense MLP
    active: int = 0  # experts per token
    expert_intermediate: int = 0
    moe_layers: tuple[int, ...] = ()

    @classmethod
    def of(cls, model: ModelLike) -> Arch:
        c = hf_config(model)
        c = getattr(c, "text_config", None) or c
        try:
            hidden, heads = int(c.hidden_size), int(c.num_attention_heads)
            kw: dict[str, Any] = dict(
                model_type=str(c.model_type), hidden=hidden, layers=int(c.num_hidden_layers), heads=heads,
                kv_heads=int(getattr(c, "num_key_value_heads", None) or heads),
                head_dim=int(getattr(c, "head_dim", None) or hidden // heads),
                intermediate=int(c.intermediate_size), vocab=int(c.vocab_size))
        except (AttributeError, TypeError) as exc:
            raise ConfigError(f"model_type={getattr(c, 'model_type', '?')}: not a Llama/Qwen-style decoder ({exc})") from None
        experts = int(getattr(c, "num_experts", None) or getattr(c, "num_local_experts", None) or 0)
        if experts:
            step = int(getattr(c, "decoder_sparse_step", 1) or 1)
            dense = set(getattr(c, "mlp_only_layers", None) or [])
            kw.update(experts=experts, active=int(c.num_experts_per_tok),
                      expert_intermediate=int(getattr(c, "moe_intermediate_size", None) or kw["intermediate"]),
                      moe_layers=tuple(i for i in range(kw["layers"]) if i not in dense and (i + 1) % step == 0))
        return cls(**kw)

    @property
    def family(self) -> str:
        """llama or qwen (the LR law's exponent depends on it), else the model_type."""
        for fam in ("llama", "qwen"):
            if self.model_type.startswith(fam):
                return fam
        return self.model_type


# ----------------------------------------------------------------------------- parameter counts


_META: dict[str, torch.nn.Module] = {}


def _model(config: ModelLike) -> torch.nn.Module:
    """A fresh copy of the model on the meta device: shapes only, no memory, no weights."""
    import torch
    from transformers import AutoModelForCausalLM

    conf = hf_config(config)
    key = conf.to_json_string(use_diff=False)
    if key not in _META:
        with torch.device("meta"):
            _META[key] = AutoModelForCausalLM.from_config(conf)
    return copy.deepcopy(_META[key])


def lora_param_count(config: ModelLike, rank: int, layers: str = "all", unembed: bool = False) -> int:
    """Trainable parameters of rank-`rank` LoRA on `layers` (attn, mlp, all), with the lm_head
    adapter if `unembed`: what lora_lab.lora.apply_lora creates on this model."""
    from lora_lab.lora import apply_lora

    cfg = LoraConfig(rank=rank, layers=layers, unembed=unembed)  # validates rank and layers
    return sum(s.num_params() for s in apply_lora(_model(config), cfg))


def full_param_count(config: ModelLike) -> int:
    """All parameters (what FullFT trains), tied embeddings counted once."""
    return sum(p.numel() for p in _model(config).parameters())


def rank_unit(config: ModelLike, layers: str) -> int:
    """Ranks must be multiples of this: the active experts when MoE experts are adapted, else 1."""
    a = Arch.of(config)
    return a.active if a.experts and a.moe_layers and layers in ("mlp", "all") else 1


# ----------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class Flops:
    """Matmul FLOPs (per token, or per whatever the caller multiplies by)."""

    forward: float = 0.0
    input_grad: float = 0.0
    weight_grad: float = 0.0

    @property
    def backward(self) -> float:
        return self.input_grad + self.weight_grad

    @property
    def total(self) -> float:
        return self.forward + self.input_grad + self.weight_grad

    def __add__(self, o: Flops) -> Flops:
        return Flops(self.forward + o.forward, self.input_grad + o.input_grad, self.weight_grad + o.weight_grad)

    def __mul__(self, k: float) -> Flops:
        return Flops(self.forward * k, self.input_grad * k, self.weight_grad * k)

    __rmul__ = __mul__


def linear_flops(d_in: int, d_out: int, *, trainable: bool = False, rank: int = 0,
                 input_grad: bool = True) -> tuple[Flops, bool]:
    """One linear layer per token: FullFT (trainable), frozen, or frozen with a rank-`rank` LoRA.
    `input_grad`: whether its input needs a gradient. Returns the FLOPs and whether its output
    needs one."""
    base = 2 * d_in * d_out
    fwd, ig, wg = base, 0, 0
    if input_grad:
        ig += base
    if trainable:
        wg += base
    if rank:
        fwd += 2 * rank * (d_in + d_out)
        ig += 2 * rank * d_out + (2 * rank * d_in if input_grad else 0)  # into x A, and into x
        wg += 2 * rank * (d_out + d_in)  # dB, dA
    return Flops(fwd, ig, wg), input_grad or trainable or rank > 0


def paper_flops_ratio(n: int, r: int) -> float:
    """C6 for one N x N matrix with rank-r LoRA: (2N^2 + 6NR) / 3N^2."""
    return (2 * n * n + 6 * n * r) / (3 * n * n)


def flops_per_token(config: ModelLike, method: str = "lora", rank: int = 8, layers: str = "all",
                    seq_len: float = 2048, unembed: bool = False) -> Flops:
    """Matmul FLOPs of one training step per token (see the module docstring for what is counted)."""
    if method not in ("lora", "full"):
        raise ConfigError(f"method={method!r}: choose lora or full")
    if layers not in ("attn", "mlp", "all"):
        raise ConfigError(f"lora.layers={layers!r}: choose attn, mlp or all")
    if seq_len < 0 or rank < 1:
        raise ConfigError(f"seq_len={seq_len}, rank={rank}: need seq_len >= 0 and rank >= 1")
    a = Arch.of(config)
    full = method == "full"
    r_attn = rank if not full and layers in ("attn", "all") else 0
    r_mlp = rank if not full and layers in ("mlp", "all") else 0
    if r_mlp and a.experts and a.moe_layers and rank % a.active:
        raise ConfigError(f"lora.rank={rank}: must be a multiple of the {a.active} active experts (per-expert rank = rank / active experts)")
    h, q, kv = a.hidden, a.heads * a.head_dim, a.kv_heads * a.head_dim
    total, grad = Flops(), full  # grad: the residual stream needs a gradient (embeddings train in FullFT)

    def lin(d_in: int, d_out: int, r: int, g: bool) -> bool:
        nonlocal total
        f, out = linear_flops(d_in, d_out, trainable=full, rank=r, input_grad=g)
        total += f
        return out

    for layer in range(a.layers):
        qkv = [lin(h, d, r_attn, grad) for d in (q, kv, kv)]
        g_attn = any(qkv)
        s = 4 * a.heads * a.head_dim * seq_len  # scores and weighted values, every query vs s keys
        total += Flops(s, 2 * s if g_attn else 0, 0)
        grad = lin(q, h, r_attn, g_attn) or grad
        if layer in a.moe_layers:
            routed = lin(h, a.experts, 0, grad)  # the router: trained in FullFT, never adapted
            r_e = r_mlp // a.active if r_mlp else 0
            for _ in range(a.active):
                g_up = lin(h, 2 * a.expert_intermediate, r_e, grad)
                routed = lin(a.expert_intermediate, h, r_e, g_up) or routed
            grad = routed or grad
        else:
            g_up = any([lin(h, a.intermediate, r_mlp, grad) for _ in range(2)])  # a list: both must run
            grad = lin(a.intermediate, h, r_mlp, g_up) or grad
    lin(h, a.vocab, rank if (unembed and not full) else 0, grad)
    return total


def flops_ratio(config: ModelLike, rank: int = 8, layers: str = "all", seq_len: float = 2048,
                unembed: bool = False) -> float:
    """LoRA / FullFT FLOPs per training token for a whole model (C6; about 2/3 at small rank)."""
    lora = flops_per_token(config, "lora", rank, layers, seq_len, unembed)
    return lora.total / flops_per_token(config, "full", rank, layers, seq_len).total


def _unembed_forward(config: ModelLike, method: str, rank: int, unembed: bool) -> float:
    """Forward FLOPs of the unembedding for one position."""
    a = Arch.of(config)
    return linear_flops(a.hidden, a.vocab, rank=rank if unembed and method == "lora" else 0,
                        input_grad=False)[0].forward


def sampling_flops(config: ModelLike, method: str = "lora", rank: int = 8, layers: str = "all", unembed: bool = False,
                   *, prompt_len: float, new_tokens: float, samples: int = 1, shared_prefill: bool = True) -> float:
    """Forward matmul FLOPs of drawing `samples` completions of `new_tokens` tokens from one prompt
    of `prompt_len` tokens with a KV cache (see the module docstring): the prefill, once
    (`shared_prefill`) or once per sample, then new_tokens - 1 cached decoding steps per sample."""
    if prompt_len < 1 or new_tokens < 1 or samples < 1:
        raise ConfigError(f"prompt_len={prompt_len}, new_tokens={new_tokens}, samples={samples}: each must be >= 1")

    def forward(keys: float) -> float:  # one position attending to `keys` keys
        return flops_per_token(config, method, rank, layers, keys, unembed).forward

    head = _unembed_forward(config, method, rank, unembed)
    prefill = prompt_len * (forward(prompt_len) - head) + head  # logits of the last prompt position only
    # Decoding step t (t = 0 .. G-2) feeds token t at position P + t: it attends to P + t + 1 keys.
    decode = (new_tokens - 1) * forward(prompt_len + new_tokens / 2)
    return (1 if shared_prefill else samples) * prefill + samples * decode


@dataclass(frozen=True)
class SamplingCost:
    """What an RL run's sampling costs: forward FLOPs of the training completions and of the held-out
    greedy evaluations, and the generated tokens (at their length limits: upper bounds)."""

    train: float
    eval: float
    train_tokens: float
    eval_tokens: float
    evals: int  # held-out evaluations of a run that completes

    @property
    def total(self) -> float:
        return self.train + self.eval


def rl_evals(cfg: Config, steps: int) -> int:
    """Held-out evaluations of an RL run that completes: the base model at step 0, every
    train.eval_every steps before the last, and the end (lora_lab/rl.py)."""
    every = cfg.train.eval_every
    return 2 + ((steps - 1) // every if every and steps > 0 else 0)


def rl_sampling_cost(cfg: Config, steps: int, prompt_len: float) -> SamplingCost:
    """Sampling of an RL run of `steps` steps whose prompts have `prompt_len` tokens on average:
    rl.prompts_per_step groups of rl.group_size completions of up to rl.max_new_tokens a step, and
    data.eval_size (+ rl.val_size validation) greedy completions of up to rl.eval_max_new_tokens
    (else rl.max_new_tokens) per evaluation."""
    rl, lc = cfg.rl, cfg.lora
    kw = dict(method=cfg.method, rank=lc.rank, layers=lc.layers, unembed=lc.unembed, prompt_len=prompt_len)
    group = sampling_flops(cfg.model, **kw, new_tokens=rl.max_new_tokens, samples=rl.group_size,
                           shared_prefill=rl.sampler != "generate")
    eval_new = rl.eval_max_new_tokens or rl.max_new_tokens
    evals = rl_evals(cfg, steps)
    problems = cfg.data.eval_size + rl.val_size
    one_eval = problems * sampling_flops(cfg.model, **kw, new_tokens=eval_new)
    return SamplingCost(steps * rl.prompts_per_step * group, evals * one_eval,
                        float(steps * rl.prompts_per_step * rl.group_size * rl.max_new_tokens),
                        float(evals * problems * eval_new), evals)


def run_steps(cfg: Config, rows: int | None) -> int | None:
    """Optimizer steps of a run: train.max_steps, else epochs x (rows // batch) (the train loop's count)."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return None if rows is None else cfg.train.epochs * (rows // cfg.optim.batch_size)


def rl_episodes(cfg: Config, steps: int | None) -> int | None:
    """Episodes (sampled completions) of an RL run: steps x prompts per step x group size."""
    rl = getattr(cfg, "rl", None)
    return None if steps is None or rl is None else steps * rl.prompts_per_step * rl.group_size


def run_cost(cfg: Config, rows: int | None, mean_len: float, attn_len: float) -> tuple[int | None, float, float]:
    """(steps, tokens, FLOPs) of one run's learner. Tokens = steps x batch x mean tokens per row (RL:
    episodes x mean row length, the trained tokens; sampling is `rl_sampling_cost`). Padding is not
    counted: model FLOPs, the quantity MFU is defined on."""
    steps = run_steps(cfg, rows)
    if steps is None:
        return None, float("nan"), float("nan")
    seqs = (rl_episodes(cfg, steps) or 0) if cfg.task == "rl" else steps * cfg.optim.batch_size
    tokens = seqs * mean_len
    lc = cfg.lora
    return steps, tokens, flops_per_token(cfg.model, cfg.method, lc.rank, lc.layers, attn_len, lc.unembed).total * tokens


def gpu_hours(flops: float, gpu: str = "h100", mfu: float = 0.4) -> float:
    """GPU-hours to execute `flops` at a model-FLOPs utilisation `mfu` of the bf16 dense peak."""
    if gpu not in GPU_PEAK_TFLOPS:
        raise ConfigError(f"gpu={gpu}: choose one of {', '.join(GPU_PEAK_TFLOPS)}")
    if not 0 < mfu <= 1:
        raise ConfigError(f"mfu={mfu}: must be in (0, 1]")
    return flops / (GPU_PEAK_TFLOPS[gpu] * 1e12 * mfu) / 3600


def main(argv: list[str]) -> int:
    model, rank, seq = argv[0], int(argv[1]) if len(argv) > 1 else 8, int(argv[2]) if len(argv) > 2 else 2048
    for method in ("lora", "full"):
        f = flops_per_token(model, method, rank, "all", seq)
        print(json.dumps({"method": method, "forward": f.forward, "input_grad": f.input_grad,
                          "weight_grad": f.weight_grad, "total": f.total}))
    print(f"ratio {flops_ratio(model, rank, 'all', seq):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
