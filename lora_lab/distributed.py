"""Runs on several processes (GPUs, nodes) with PyTorch FSDP2: process-group setup, sharding, the
data-parallel split of each optimizer batch, and sharded checkpoints. The memory estimate that says
how many GPUs a run needs is lora_lab/memory.py.

The same `lora-lab train` config runs on one process or on N. Rank and world size come from the
environment: torchrun's RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, or, inside an
srun step with several tasks (what submitit starts for a profile with tasks_per_node or nodes > 1),
SLURM's through submitit's JobEnvironment. Backend: nccl on GPU, gloo on CPU.

    torchrun --nproc_per_node 2 -m lora_lab train method=full optim.batch_size=32 train.max_steps=20

Sharding (`fully_shard`): every decoder layer, then the root (embeddings, final norm, lm_head). FullFT
shards all weights, gradients and AdamW state; LoRA shards the frozen base and the adapters (only the
adapters have gradients and optimizer state). On GPU the compute runs in bf16 (MixedPrecisionPolicy:
bf16 parameters for the forward and backward, fp32 gradient reduction) over fp32 trainable
parameters, which AdamW updates; a frozen LoRA base stays in model.dtype. On CPU everything is fp32.
A single-process run keeps its own path (no FSDP; on GPU, parameters in model.dtype).

The loss is the single-process loss exactly: each optimizer batch of optim.batch_size sequences is
sorted by length and dealt round-robin to the ranks (batch_size / world_size each, in micro-batches
of optim.micro); each rank sums its NLL, the target-token count is all-reduced, and each rank
backpropagates world_size x its NLL / the global count, because FSDP averages gradients over ranks.

Checkpoints of a run with world_size > 1 are sharded with torch.distributed.checkpoint (DCP) in
checkpoint/dcp/ (each rank writes its shards; resharding to another world size works); the final
checkpoint (FullFT weights) is gathered into checkpoint/state.pt, the single-process format that
`lora_lab.runs.load_run` reads. Only rank 0 writes config, metrics, summary, meta and the adapter.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import types
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from lora_lab.config import ConfigError

if TYPE_CHECKING:
    from lora_lab.config import Config
    from lora_lab.lora import Site

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ----------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: its global rank, the number of processes, and its rank on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ(environ: dict[str, str] | None = None) -> DistEnv:
    """Rank and world size from torchrun's variables, else from a multi-task srun step (SLURM), else
    one process. A shell inside an allocation (salloc) that is not an srun step runs one process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        port = env.get("MASTER_PORT")
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR"), int(port) if port else None)
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        if environ is not None:  # a given mapping (tests): read it directly
            return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                           _first_host(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")),
                           _slurm_port(env))
        from submitit.helpers import TorchDistributedEnvironment

        # Master address = the first node of the job, port derived from the job id (MASTER_PORT wins).
        t = TorchDistributedEnvironment()
        return DistEnv(t.rank, t.world_size, t.local_rank, t.master_addr, t.master_port)
    return DistEnv()


def _first_host(nodelist: str) -> str | None:
    # "gpu[01-04,07],cpu1" -> gpu01; a plain name stays as it is.
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head or None


def _slurm_port(env) -> int:
    if env.get("MASTER_PORT"):
        return int(env["MASTER_PORT"])
    return 20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 40000


def world_size_from_env() -> int:
    """The number of processes this run will have (1 outside torchrun / multi-task srun)."""
    try:
        return env_from_environ(dict(os.environ)).world_size
    except (ValueError, KeyError):
        return 1


_ENV = DistEnv()


def current() -> DistEnv:
    """This process's place, as set by `setup` (one process before it or without it)."""
    return _ENV


def setup(device: str) -> tuple[DistEnv, torch.device | None]:
    """Start the process group when the environment asks for several processes. Returns the env and,
    for world_size > 1, this rank's device (cuda:<local rank> on GPU); None for one process."""
    global _ENV
    env = env_from_environ()
    if env.world_size <= 1:
        _ENV = env
        return env, None
    from lora_lab.models import resolve_device

    kind = resolve_device(device).type
    if kind == "cuda":
        torch.cuda.set_device(env.local_rank)
        dev = torch.device("cuda", env.local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        if env.master_addr:
            os.environ.setdefault("MASTER_ADDR", env.master_addr)
        if env.master_port:
            os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", rank=env.rank, world_size=env.world_size,
                                timeout=dt.timedelta(minutes=30), device_id=dev if kind == "cuda" else None)
    _ENV = env
    return env, dev


def teardown() -> None:
    global _ENV
    if dist.is_initialized():
        dist.destroy_process_group()
    _ENV = DistEnv()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's value on every rank (identity on one process)."""
    if _ENV.world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks, in float64 (counts stay exact)."""
    if _ENV.world_size <= 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if _ENV.world_size > 1:
        dist.barrier()


def check_batch(batch_size: int, micro_batch_size: int | None, world_size: int) -> None:
    """ConfigError unless each of world_size processes gets whole micro-batches of the global batch."""
    if world_size <= 1:
        return
    if batch_size % world_size:
        raise ConfigError(f"optim.batch_size={batch_size}: must be divisible by the {world_size} processes "
                          f"(the global batch is split evenly among them)")
    if micro_batch_size and batch_size % (world_size * micro_batch_size):
        raise ConfigError(f"optim.micro_batch_size={micro_batch_size}: {world_size} processes x {micro_batch_size} "
                          f"must divide optim.batch_size={batch_size}")


def local_share(idx: list[int]) -> list[int]:
    """This rank's sequences of a length-sorted optimizer batch: dealt round-robin, so every rank gets
    the same number and a similar spread of lengths."""
    return idx[_ENV.rank::_ENV.world_size]


# ----------------------------------------------------------------------------- sharding


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks (Hugging Face names their class in `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"model: cannot find the decoder layers of {type(model).__name__} to shard "
                          "(no _no_split_modules); run it on one process")
    return layers


def build_sharded(cfg: "Config", device: torch.device):
    """(model, tokenizer, total parameters, LoRA sites), sharded over the ranks.

    Rank 0 loads the weights (on CPU, so a node's RAM holds one copy, not one per GPU); the others
    build the model on the meta device. After fully_shard, every rank allocates only its shards and
    rank 0's weights (and LoRA init) are broadcast into them: every rank starts from the one-process
    run's exact initial state."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    from lora_lab import lora as lora_mod
    from lora_lab.models import build_model, count_params, load_tokenizer, model_config, resolve_dtype

    on_gpu = device.type == "cuda"
    # FullFT on GPU: fp32 trainable weights that AdamW updates, bf16 compute (MixedPrecisionPolicy).
    # LoRA: the frozen base in model.dtype (bf16 on GPU); the adapters are fp32 (lora.py).
    compute = resolve_dtype(cfg.model.dtype, device)
    stored = torch.float32 if cfg.method == "full" and on_gpu else compute
    model = None
    if _ENV.is_main:
        model, tok = build_model(dataclasses.replace(cfg.model, dtype=_DTYPE_NAMES[stored]), "cpu")
    # The other ranks build the same forward (attention kernel included) as rank 0 loaded.
    attn = broadcast_object(getattr(model.config, "_attn_implementation", None) if model is not None else None)
    if not _ENV.is_main:
        tok = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(model_config(cfg.model), dtype=stored, attn_implementation=attn)
        model.config.use_cache = False
        model.train()
    total = count_params(model)
    sites = lora_mod.apply_lora(model, cfg.lora) if cfg.method == "lora" else []
    if cfg.method == "full":
        model.requires_grad_(True)
    full_state = model.state_dict() if _ENV.is_main else {}
    shard(model, device, compute)
    if not _ENV.is_main:
        model.to_empty(device=device)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, full_state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Non-persistent buffers (rotary inv_freq) are in no state dict: rank 0's, on every rank.
    for module in model.modules():
        for name, b in list(module.named_buffers(recurse=False)):
            if b.device != device:  # in case fully_shard left one of rank 0's on the CPU
                module._buffers[name] = b = b.to(device)
            dist.broadcast(b.data, src=0)
    return model, tok, total, sites


def shard(model: torch.nn.Module, device: torch.device, compute_dtype: torch.dtype) -> None:
    """fully_shard each decoder layer, then the root. A compute_dtype other than fp32 (bf16 on GPU):
    parameters are cast to it for the forward and backward; gradients are reduced in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (_ENV.world_size,))
    # Parameters of one fully_shard group must share a dtype unless they are cast for compute: with a
    # bf16 base, fp32 adapters are cast to bf16 for the matmuls and their gradients reduced in fp32.
    mp = (MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
          if compute_dtype != torch.float32 else MixedPrecisionPolicy())
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    # The root's parameters (embeddings, norm, lm_head) are used last in the backward: keep them gathered.
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> float:
    """Global gradient norm (clipped to max_norm when finite); DTensor gradients give the norm over
    all shards."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)
    return float((full() if full else norm).item())


def full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a (possibly sharded) parameter; a collective for a DTensor."""
    full = getattr(p, "full_tensor", None)
    return (full() if full else p).detach()


def export_sites(sites: list["Site"]) -> list["Site"]:
    """Sites whose adapters hold whole (gathered) tensors, for lora.export_peft. Every rank must call
    it (each gather is a collective); the result is used on rank 0."""
    import dataclasses

    out = []
    for s in sites:
        m = s.module
        stub = types.SimpleNamespace(rank=m.rank, lora_A=full_tensor(m.lora_A).cpu(), lora_B=full_tensor(m.lora_B).cpu())
        out.append(dataclasses.replace(s, module=stub))
    return out


# ----------------------------------------------------------------------------- checkpoints


def dcp_dir(checkpoint_file: Path) -> Path:
    """checkpoint/dcp next to checkpoint/state.pt."""
    return checkpoint_file.parent / "dcp"


def save_sharded(checkpoint_file: Path, model, opt, counters: dict) -> None:
    """Sharded checkpoint: every rank writes its shards of weights and optimizer state to dcp.tmp/,
    rank 0 adds the counters and swaps it in for dcp/ (an interrupted save leaves the old one)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, tmp = dcp_dir(checkpoint_file), dcp_dir(checkpoint_file).with_name("dcp.tmp")
    if _ENV.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    model_sd, optim_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    barrier()
    if _ENV.is_main:
        counters = {**counters, "world_size": _ENV.world_size, "rng": torch.get_rng_state().tolist()}
        (tmp / "counters.json").write_text(json.dumps(counters))
        old = final.with_name("dcp.old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


# What a DCP checkpoint's .metadata may name when unpickled: DCP's own records, sizes, dtypes and
# layouts. Anything else is refused before torch.distributed.checkpoint reads the file, which it does
# with plain pickle (a planted .metadata would otherwise run code on resume).
_DCP_METADATA_GLOBALS = {
    ("torch.distributed.checkpoint.metadata", n) for n in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "ChunkStorageMetadata", "BytesStorageMetadata", "_MEM_FORMAT_ENCODING")
} | {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
     ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("collections", "OrderedDict")}


def check_dcp_metadata(directory: Path) -> None:
    """Unpickle a sharded checkpoint's .metadata with only the allowed globals (torch dtypes too);
    a CheckpointError naming the file for anything else, before DCP itself reads it."""
    import pickle

    from lora_lab.runs import CheckpointError

    path = Path(directory) / ".metadata"

    class Allowed(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _DCP_METADATA_GLOBALS or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    try:
        with open(path, "rb") as f:
            Allowed(f).load()
    except (pickle.UnpicklingError, EOFError, OSError, AttributeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: refused, nothing in it was run ({type(exc).__name__}: {exc}); delete "
                              f"{Path(directory)} to resume from an older checkpoint or start again") from None


def _safe_load_planner():
    """DCP's default load planner, except that non-tensor entries (optimizer settings) load with
    torch.load(weights_only=True) instead of a plain unpickle."""
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class SafeLoadPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafeLoadPlanner()


def load_sharded(checkpoint_file: Path, model, opt) -> dict | None:
    """Restore weights and optimizer from checkpoint/dcp (or dcp.old, left by a save cut short after
    its swap began); the counters, or None when there is no sharded checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = None
    for p in (dcp_dir(checkpoint_file), dcp_dir(checkpoint_file).with_name("dcp.old")):
        if (p / "counters.json").exists():
            path = p
            break
    path = broadcast_object(str(path) if path else None)
    if path is None:
        return None
    check_dcp_metadata(Path(path))
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=path, planner=_safe_load_planner())
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    counters = json.loads((Path(path) / "counters.json").read_text())
    torch.set_rng_state(torch.tensor(counters.pop("rng"), dtype=torch.uint8))
    return counters


def full_model_state(model) -> dict[str, torch.Tensor]:
    """Every weight, whole, on rank 0's CPU (empty on the other ranks); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def remove_sharded(checkpoint_file: Path) -> None:
    """A finished run's final checkpoint is state.pt; its sharded ones go (FullFT 8B: ~100 GB)."""
    if _ENV.is_main:
        for name in ("dcp", "dcp.old", "dcp.tmp"):
            shutil.rmtree(checkpoint_file.parent / name, ignore_errors=True)

