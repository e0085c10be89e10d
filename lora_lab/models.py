"""Base models: built-in tiny presets and Hugging Face models (hub id or local directory).

`tiny-llama` (dense, Llama architecture) and `tiny-moe` (Qwen3-MoE architecture, 8 experts, 2
active per token) share the tokenizer in lora_lab/assets/tokenizer. Where pretrained weights for
a preset are shipped in lora_lab/assets/<preset>/, they are loaded; otherwise the preset is built
from its config with a seeded random init (`model.init_seed`), so a run can be rebuilt exactly.

Real models load with AutoModelForCausalLM: bf16 on GPU, fp32 on CPU, trust_remote_code off
unless `model.trust_remote_code=true`.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lora_lab import hub
from lora_lab.tiny.presets import TINY_CONFIGS, tiny_config
from lora_lab.tiny.tokenizer import ASSETS, TOKENIZER_DIR

if TYPE_CHECKING:
    from lora_lab.config import ModelConfig

# What transformers' from_pretrained looks for, in its order: one weights file, or an index and its shards.
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_available(cfg: "ModelConfig") -> None:
    """With the hub offline (lora_lab/hub.py), a hub model (model.name=org/name) must be in the local
    hub cache: its config.json and all its weights. Else the run would fail only when it builds the
    model, with transformers' several-line OSError; a cache that holds just the config (`lora-lab
    plan` fetches configs alone) would pass the pre-flight's architecture check and fail the same
    way. Presets and local directories need nothing from the hub."""
    if cfg.name in TINY_CONFIGS or Path(cfg.name).expanduser().is_dir() or not hub.offline():
        return
    from huggingface_hub import constants, try_to_load_from_cache

    def cached(filename: str) -> str | None:
        found = try_to_load_from_cache(cfg.name, filename, revision=cfg.revision)
        return found if isinstance(found, str) else None  # None, or a marker that the repo lacks it

    missing = None if cached("config.json") else "its config.json"
    if missing is None:
        weights = next((f for f in _WEIGHT_FILES if cached(f)), None)
        if weights is None:
            missing = "its weights"
        elif weights.endswith(".index.json"):
            shards = sorted(set(json.loads(Path(cached(weights) or "").read_text()).get("weight_map", {}).values()))
            missing = next((f"weights shard {s}" for s in shards if not cached(s)), None)
    if missing:
        from lora_lab.config import ConfigError

        revision = f" at revision {cfg.revision}" if cfg.revision else ""
        raise ConfigError(f"model.name={cfg.name!r}: not available offline (no network, and {missing}{revision} is not in "
                          f"the hub cache {constants.HF_HUB_CACHE}); on a machine with network run `hf download "
                          f"{cfg.name} --local-dir <dir>` and set model.name=<dir>, or fill this cache with `hf download {cfg.name}`")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from lora_lab.config import ConfigError

        raise ConfigError("train.device='cuda': no CUDA device is visible; use train.device=auto or cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def load_tokenizer(name: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoTokenizer

    if name in TINY_CONFIGS:
        shipped = ASSETS / name
        tok = AutoTokenizer.from_pretrained(str(shipped if (shipped / "tokenizer.json").exists() else TOKENIZER_DIR))
    else:

        # An unreachable hub goes straight to the local cache (no ~25 s of retries on an air-gapped node).
        tok = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision,
                                            local_files_only=hub.offline() or None)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def model_config(cfg: "ModelConfig"):
    """The architecture config alone (no weights): enough for pre-flight checks and counts."""
    from transformers import AutoConfig

    if cfg.name in TINY_CONFIGS:
        weights = ASSETS / cfg.name
        if (weights / "config.json").exists():
            return AutoConfig.from_pretrained(str(weights))
        return tiny_config(cfg.name, len(load_tokenizer(cfg.name)))
    return AutoConfig.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision)


def base_reference(cfg: "ModelConfig") -> str:
    """What an exported adapter names as its base model (adapter_config.json's
    base_model_name_or_path), so that peft's `AutoPeftModelForCausalLM.from_pretrained(adapter_dir)`
    finds it: a shipped preset's installed asset directory, a local model's absolute path, or the
    hub id. A preset without shipped weights (a seeded random init) has nothing to point at."""
    if cfg.name in TINY_CONFIGS:
        weights = ASSETS / cfg.name
        return str(weights) if (weights / "model.safetensors").is_file() else cfg.name
    path = Path(cfg.name).expanduser()
    return str(path.resolve()) if path.is_dir() else cfg.name


def build_model(cfg: "ModelConfig", device: torch.device | str = "cpu"):
    """(model, tokenizer) on `device`, in the dtype of cfg.dtype, in train mode with dropout off."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    dtype = resolve_dtype(cfg.dtype, device)
    tok = load_tokenizer(cfg.name, cfg.trust_remote_code, cfg.revision)
    if cfg.name in TINY_CONFIGS and not (ASSETS / cfg.name / "config.json").exists():
        conf = tiny_config(cfg.name, len(tok))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            model = AutoModelForCausalLM.from_config(conf, dtype=dtype)
    else:
        source = str(ASSETS / cfg.name) if cfg.name in TINY_CONFIGS else cfg.name
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
            revision=None if cfg.name in TINY_CONFIGS else cfg.revision,
        )
    model.to(device)
    # Decoder-only SFT: no KV cache during training; config dropout off for exact resume.
    model.config.use_cache = False
    model.train()
    return model, tok


def compute_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every forward of `model` (training, eval, target_logits, sampling) under autocast to `dtype`:
    parameters may then be kept in fp32 (master weights for the optimizer) while matmuls run in
    bf16. The wrapper is the model's own `forward`, so nothing that calls the model can miss it."""
    forward = model.forward
    device_type = next(model.parameters()).device.type

    @functools.wraps(forward)
    def autocast_forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return forward(*args, **kwargs)

    model.forward = autocast_forward
    model.compute_dtype = dtype


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def set_threads_from_env() -> int | None:
    """Under SLURM with task/none a job sees every core: use the cores it was given."""
    n = os.environ.get("SLURM_CPUS_PER_TASK")
    if n and n.isdigit() and int(n) > 0:
        torch.set_num_threads(int(n))
        return int(n)
    return None


def target_logits(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  where: torch.Tensor) -> torch.Tensor:
    """Logits [N, vocab] at the N positions where `where` ([B, L-1], position t predicting token
    t + 1) is true, in row-major order: the same numbers as `model(...).logits[:, :-1][where]`.

    Only those positions reach the unembedding: a forward hook on the decoder hands the causal-LM
    head their hidden states, as one row, and the head runs as it always does (its own forward, so
    FSDP2's gathering of the root's weights, an adapter on lm_head and any logit scaling all
    apply). Assistant-only SFT targets are ~30% of tiny-tulu's positions: a LoRA step's forward and
    backward take 0.95x the time of full logits there (experiments/bench_micro_batches.py), and at a
    128k vocabulary the [B, L, vocab] logits tensor is never built."""
    keep = torch.nn.functional.pad(where, (0, 1))  # the last position predicts nothing

    def hook(module, args, out):
        out.last_hidden_state = out.last_hidden_state[keep].unsqueeze(0)
        return out

    handle = model.get_decoder().register_forward_hook(hook)
    try:
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[0]
    finally:
        handle.remove()
