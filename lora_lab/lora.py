"""LoRA, our own: W' = W + (alpha / r) B A on a frozen base, with export to peft's adapter format.

Paper settings ("LoRA Without Regret", section "Experimental setup"): alpha = 32 for every rank,
A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (peft's kaiming init; `lora.init_a_scale` scales the bound),
B = 0, one LR for A and B (`lora.lr_a_mult`, `lora.lr_b_mult` separate them for claim C8).
`lora.alpha_mode` lets alpha follow the rank instead (`rank`: alpha = lora.alpha * r, `sqrt_rank`:
rsLoRA's alpha / sqrt(r)); every adapter, per-expert ones included, takes its scale from
`LoraConfig.scale(r)`, and the export says the same to peft (alpha_pattern, use_rslora).

Layer sets: attn = q, k, v, o; mlp = gate, up, down; all = both; `lora.unembed` adds lm_head.
MoE experts get one LoRA per expert with per-expert rank = rank / experts-per-token (the paper's
rule, which keeps the active LoRA parameters per token equal to a dense model's). Fused 3-D
expert weights (transformers 5.x Qwen3-MoE: `experts.gate_up_proj` [E, 2I, H],
`experts.down_proj` [E, H, I], both (out, in) per expert) are adapted by a parametrization
W_e + s B_e A_e, which is also how peft's `target_parameters` works, so exports reload in peft.

Dense layers hold K independent adapters (a leading K dimension, K = 1 for a normal run): the
batch is split into K contiguous groups, group k goes through adapter k. That lets one process
train K runs of a sweep on one frozen base.

Precision: the adapters' parameters (and so their gradients and AdamW state) are fp32. On a bf16 or
fp16 base on CUDA they compute in the base's dtype: A and B are cast for the forward, the input is
used as it is, and autograd casts the gradients back to fp32. Computed in fp32 there, every adapted
layer would keep an fp32 copy of its input for the backward (q, k and v one each): on Llama-3.1-8B
with LoRA on all layers, 1.5x the activations the decoder layers keep (tests/test_memory.py). On the
CPU and on an fp32 base nothing is cast: those results are bitwise what they were
(`LoRALinear.in_base_dtype` forces either way).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from lora_lab.config import ConfigError, lora_scale

if TYPE_CHECKING:
    from lora_lab.config import LoraConfig

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
EXPERT_PARAMS = ("gate_up_proj", "down_proj")  # gate_up first: peft nests it innermost
PEFT_PREFIX = "base_model.model."


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _in_base_dtype(flag: bool | None, base: torch.Tensor) -> bool:
    """Whether adapters on this base weight compute in its dtype: `flag` when set, else for a
    bf16/fp16 base on CUDA."""
    if flag is not None:
        return flag and base.dtype in _LOW_PRECISION
    return base.is_cuda and base.dtype in _LOW_PRECISION


def _uniform_a(shape: tuple[int, ...], d_in: int, scale: float, device, generator=None) -> torch.Tensor:
    bound = scale / math.sqrt(d_in)
    a = torch.empty(shape, dtype=torch.float32, device=device)
    return a.uniform_(-bound, bound, generator=generator)


class LoRALinear(nn.Module):
    """y = base(x) + s (x A^T) B^T, with A: [K, r, d_in], B: [K, d_out, r] in fp32, computed in the
    base's dtype on a bf16/fp16 CUDA base (see the module docstring); s = alpha / r under the
    default `alpha_mode` (config.lora_scale)."""

    # None: in the base's dtype for a bf16/fp16 base on CUDA, else fp32; True / False force it.
    in_base_dtype: bool | None = None

    def __init__(self, base: nn.Linear, rank: int, alpha: float, init_a_scale: float = 1.0, k: int = 1,
                 alpha_mode: str = "fixed"):
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.alpha_mode = rank, alpha, alpha_mode
        self.scale = lora_scale(alpha, alpha_mode, rank)
        d_in, d_out, dev = base.in_features, base.out_features, base.weight.device
        self.lora_A = nn.Parameter(_uniform_a((k, rank, d_in), d_in, init_a_scale, dev))
        self.lora_B = nn.Parameter(torch.zeros(k, d_out, rank, dtype=torch.float32, device=dev))

    @property
    def k(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        a, b = self.lora_A, self.lora_B
        if _in_base_dtype(self.in_base_dtype, self.base.weight):
            # Casts of A and B (small) instead of an fp32 copy of x (large) kept for the backward.
            a, b = a.to(self.base.weight.dtype), b.to(self.base.weight.dtype)
        xa = x.to(a.dtype)
        if self.k == 1:
            d = F.linear(F.linear(xa, a[0]), b[0])
        else:
            if x.shape[0] % self.k:
                raise ValueError(f"batch of {x.shape[0]} cannot be split among {self.k} adapters")
            xs = xa.reshape(self.k, -1, x.shape[-1])
            d = torch.bmm(torch.bmm(xs, a.transpose(1, 2)), b.transpose(1, 2))
            d = d.reshape(*x.shape[:-1], -1)
        # Scale after B, as peft does, so that parity holds bitwise in fp32.
        return y + (d * self.scale).to(y.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, alpha_mode={self.alpha_mode}, k={self.k}"


class ExpertLoRA(nn.Module):
    """Parametrization of a fused expert weight W [E, d_out, d_in]: W_e + s B_e A_e (s as in LoRALinear),
    A: [E, r, d_in], B: [E, d_out, r] in fp32 (B A computed in W's dtype on a bf16/fp16 CUDA base).

    The merged weight (W's size, in W's dtype) is what the experts' matmuls use: it is kept for the
    backward, for every MoE layer (under `cached()` for the whole forward, activation checkpointing
    or not), and is not sharded by FSDP since it is built from the gathered W. On
    Qwen3-30B-A3B that is ~58 GB per GPU (lora_lab.memory.memory_estimate counts it)."""

    in_base_dtype: bool | None = None

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, init_a_scale: float = 1.0,
                 alpha_mode: str = "fixed"):
        super().__init__()
        e, d_out, d_in = weight.shape
        self.rank, self.alpha, self.alpha_mode = rank, alpha, alpha_mode
        self.scale = lora_scale(alpha, alpha_mode, rank)
        self.lora_A = nn.Parameter(_uniform_a((e, rank, d_in), d_in, init_a_scale, weight.device))
        self.lora_B = nn.Parameter(torch.zeros(e, d_out, rank, dtype=torch.float32, device=weight.device))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A, self.lora_B
        if _in_base_dtype(self.in_base_dtype, w):
            a, b = a.to(w.dtype), b.to(w.dtype)
        return w + (torch.bmm(b, a) * self.scale).to(w.dtype)


@dataclass
class Site:
    """One adapted matrix (or stack of expert matrices)."""

    path: str  # module path in the model, e.g. model.layers.0.self_attn.q_proj
    param: str | None  # expert parameter name for fused experts, else None
    module: nn.Module  # LoRALinear or ExpertLoRA
    d_in: int
    d_out: int
    experts: int  # 1 for a dense matrix

    @property
    def rank(self) -> int:
        return self.module.rank

    def num_params(self) -> int:
        return self.rank * self.experts * (self.d_in + self.d_out)


def experts_per_token(model: nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("num_experts_per_tok", "moe_topk", "num_experts_per_token"):
        if cfg is not None and getattr(cfg, key, None):
            return int(getattr(cfg, key))
    return None


def _expert_rank(rank: int, active: int | None, where: str) -> int:
    if not active:
        raise ConfigError(f"lora.rank={rank}: model has experts at {where} but no num_experts_per_tok in its config")
    if rank % active:
        raise ConfigError(f"lora.rank={rank}: must be a multiple of the {active} active experts (per-expert rank = rank / active experts)")
    return rank // active


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _is_fused_experts(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, p, None), nn.Parameter) and getattr(module, p).dim() == 3 for p in EXPERT_PARAMS)


def apply_lora(model: nn.Module, cfg: "LoraConfig", k: int = 1) -> list[Site]:
    """Freeze the model and add adapters per cfg; returns the adapted sites in model order."""
    model.requires_grad_(False)
    names = {"attn": ATTN, "mlp": MLP, "all": ATTN + MLP}[cfg.layers]
    want_experts = cfg.layers in ("mlp", "all")
    active = experts_per_token(model)
    sites: list[Site] = []
    for path, module in list(model.named_modules()):
        leaf = path.rpartition(".")[2]
        if isinstance(module, nn.Linear) and (leaf in names or (cfg.unembed and path == _lm_head_path(model))):
            in_experts = ".experts." in f".{path}."
            rank = _expert_rank(cfg.rank, active, path) if in_experts else cfg.rank
            lora = LoRALinear(module, rank, cfg.alpha, cfg.init_a_scale, k, cfg.alpha_mode)
            _set_module(model, path, lora)
            sites.append(Site(path, None, lora, module.in_features, module.out_features, 1))
        elif want_experts and _is_fused_experts(module):
            if k != 1:
                raise NotImplementedError("several adapters per process (k > 1) are not supported on fused MoE experts")
            rank = _expert_rank(cfg.rank, active, path)
            for p in EXPERT_PARAMS:
                w = getattr(module, p)
                lora = ExpertLoRA(w, rank, cfg.alpha, cfg.init_a_scale, cfg.alpha_mode)
                parametrize.register_parametrization(module, p, lora, unsafe=True)
                sites.append(Site(path, p, lora, w.shape[2], w.shape[1], w.shape[0]))
    if not sites:
        raise ConfigError(f"lora.layers={cfg.layers}: no matching layers in this model (looked for {', '.join(names)})")
    return sites


def _lm_head_path(model: nn.Module) -> str:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for path, module in model.named_modules():
        if module is out:
            return path
    return "lm_head"


def lora_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    for name, p in model.named_parameters():
        if name.endswith(("lora_A", "lora_B")):
            yield name, p


def param_groups(model: nn.Module, lr: float, lr_a_mult: float, lr_b_mult: float) -> list[dict]:
    a = [p for n, p in lora_parameters(model) if n.endswith("lora_A")]
    b = [p for n, p in lora_parameters(model) if n.endswith("lora_B")]
    return [{"params": a, "lr": lr * lr_a_mult, "name": "lora_A"}, {"params": b, "lr": lr * lr_b_mult, "name": "lora_B"}]


def cached():
    """Context in which parametrized expert weights are computed once per forward, not per access."""
    return parametrize.cached()


# ----------------------------------------------------------------------------- peft format


def _peft_key(site: Site) -> str:
    """The name peft matches a site's rank_pattern and alpha_pattern entries against."""
    return site.path if site.param is None else f"{site.path}.{site.param}"


def _peft_alpha(cfg: "LoraConfig", rank: int) -> float:
    """peft's lora_alpha for an adapter of this rank: peft scales by lora_alpha / r, or by
    lora_alpha / sqrt(r) with use_rslora (set for alpha_mode=sqrt_rank)."""
    return cfg.alpha * rank if cfg.alpha_mode == "rank" else cfg.alpha


def _peft_tensors(site: Site, index: int = 0) -> dict[str, torch.Tensor]:
    m = site.module
    if site.param is None:  # nn.Linear: lora_A [r, d_in], lora_B [d_out, r]
        base = f"{PEFT_PREFIX}{site.path}"
        return {f"{base}.lora_A.weight": m.lora_A[index], f"{base}.lora_B.weight": m.lora_B[index]}
    # peft's ParamWrapper: A [E*r, d_in] in per-expert blocks; B [d_out, r*E] interleaved,
    # column j*E + e is rank j of expert e. Parameters nest in target order, gate_up innermost.
    e, r = site.experts, site.rank
    nest = ".base_layer" * (len(EXPERT_PARAMS) - 1 - EXPERT_PARAMS.index(site.param))
    base = f"{PEFT_PREFIX}{site.path}{nest}"
    a = m.lora_A.reshape(e * r, site.d_in)
    b = m.lora_B.permute(1, 2, 0).reshape(site.d_out, r * e)
    return {f"{base}.lora_A.weight": a, f"{base}.lora_B.weight": b}


def export_peft(sites: list[Site], cfg: "LoraConfig", out_dir: str | Path, base_model: str, index: int = 0) -> Path:
    """Write adapter_config.json and adapter_model.safetensors that peft.PeftModel loads."""
    from peft import LoraConfig as PeftLoraConfig
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for s in sites:
        tensors.update({k: v.detach().float().cpu().contiguous() for k, v in _peft_tensors(s, index).items()})
    modules = sorted({s.path.rpartition(".")[2] for s in sites if s.param is None})
    expert_paths = sorted({s.path for s in sites if s.param is not None})
    params = [p for p in EXPERT_PARAMS if any(s.param == p for s in sites)]
    # peft matches target_parameters by suffix (mlp.experts.gate_up_proj); per-expert ranks that
    # differ from lora.rank go into rank_pattern, and (alpha_mode=rank) their alphas into
    # alpha_pattern, keyed as peft keys them.
    targets = [f"{_relative_expert_name(expert_paths[0])}.{p}" for p in params] if expert_paths else None
    rank_pattern, alpha_pattern = {}, {}
    for s in sites:
        if s.rank != cfg.rank:
            rank_pattern[_peft_key(s)] = s.rank
        if _peft_alpha(cfg, s.rank) != _peft_alpha(cfg, cfg.rank):
            alpha_pattern[_peft_key(s)] = _peft_alpha(cfg, s.rank)
    peft_cfg = PeftLoraConfig(
        r=cfg.rank, lora_alpha=_peft_alpha(cfg, cfg.rank), use_rslora=cfg.alpha_mode == "sqrt_rank",
        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", target_modules=modules or None,
        target_parameters=targets, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
    )
    peft_cfg.base_model_name_or_path = base_model
    peft_cfg.save_pretrained(str(out))
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out


def _relative_expert_name(path: str) -> str:
    # model.layers.3.mlp.experts -> mlp.experts (peft matches target_parameters by suffix)
    parts = path.split(".")
    return ".".join(parts[-2:])


def _pattern_value(pattern: dict, key: str, default):
    # peft's rule: a pattern entry applies to every name it is a dotted suffix of.
    for name, value in pattern.items():
        if re.match(rf"(.*\.)?({name})$", key):
            return value
    return default


def check_peft_scale(sites: list[Site], adapter_dir: str | Path) -> None:
    """Raise ConfigError when the adapter's adapter_config.json (lora_alpha, r, alpha_pattern,
    rank_pattern, use_rslora) scales a site otherwise than our site does."""
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.exists():
        return
    conf = json.loads(path.read_text())
    rslora = bool(conf.get("use_rslora", False))
    for s in sites:
        m, key = s.module, _peft_key(s)
        r = _pattern_value(conf.get("rank_pattern") or {}, key, conf.get("r", s.rank))
        alpha = _pattern_value(conf.get("alpha_pattern") or {}, key, conf.get("lora_alpha", m.alpha))
        theirs = alpha / (math.sqrt(r) if rslora else r)
        if not math.isclose(theirs, m.scale, rel_tol=1e-6):
            fix = (f"lora.alpha_mode=sqrt_rank lora.alpha={alpha:g}" if rslora else
                   f"lora.alpha_mode=rank lora.alpha={alpha / r:g}" if conf.get("alpha_pattern") else
                   f"lora.alpha_mode=fixed lora.alpha={alpha:g}")
            raise ConfigError(f"lora.alpha_mode={m.alpha_mode}: {path} scales {key} by {theirs:g} (lora_alpha={alpha:g}, "
                              f"r={r}, use_rslora={rslora}), lora.alpha={m.alpha:g} by {m.scale:g}; set {fix}")


def load_peft_tensors(sites: list[Site], adapter_dir: str | Path, index: int = 0) -> None:
    """Inverse of export_peft: copy an adapter's tensors into our sites, which must scale them as
    its adapter_config.json says (check_peft_scale; use_rslora included)."""
    from safetensors.torch import load_file

    check_peft_scale(sites, adapter_dir)
    tensors = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    with torch.no_grad():
        for s in sites:
            names = list(_peft_tensors(s, index))
            a, b = tensors[names[0]], tensors[names[1]]
            if s.param is None:
                s.module.lora_A[index].copy_(a)
                s.module.lora_B[index].copy_(b)
            else:
                e, r = s.experts, s.rank
                s.module.lora_A.copy_(a.reshape(e, r, s.d_in))
                s.module.lora_B.copy_(b.reshape(s.d_out, r, e).permute(2, 0, 1))
