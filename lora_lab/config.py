"""Typed configuration of a lora-lab run.

Every run is described by one `Config`: nested dataclasses registered in Hydra's ConfigStore
(schema here, values in `conf/`). Code below the command line sees these dataclasses only.
Each `__post_init__` rejects bad values with a `ConfigError` whose one-line message names the
key and the fix; the CLI turns it into exit code 2 before any model is loaded.

    from lora_lab.config import compose
    cfg = compose(["method=lora", "lora.rank=4", "train.max_steps=20"])
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, get_type_hints

from omegaconf import OmegaConf

CONF_DIR = Path(os.environ.get("LORA_LAB_CONF", Path(__file__).resolve().parent.parent / "conf"))
EXPERIMENTS_DIR = Path(os.environ.get("LORA_LAB_EXPERIMENTS", Path(__file__).resolve().parent.parent / "experiments"))

# Built-in models that build from a config shipped with the package (no download).
TINY_PRESETS = ("tiny-llama", "tiny-moe", "tiny-llama-w64", "tiny-llama-w256")
LAYER_SETS = ("all", "attn", "mlp")
METHODS = ("lora", "full")
TASKS = ("sft", "rl")
WANDB_MODES = ("disabled", "offline", "online")
PROGRESS_MODES = ("auto", "bar", "lines", "none")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
MAX_RANK = 512
# Chat templates shipped in lora_lab/assets/chat_templates/<name>.jinja (data.chat_template).
CHAT_TEMPLATES = ("llama3", "chatml")
# What happens to a sequence longer than data.max_seq_len (lora_lab/data.py encode_rows): head keeps
# its first max_seq_len tokens, drop leaves the row out.
TRUNCATIONS = ("head", "drop")
# Seeds (train.seed, data.seed, model.init_seed) are in 0..MAX_SEED: numpy's generators take no
# negative seed, and 2**63 - 1 is the largest that torch.manual_seed and an int64 column of a results
# table both hold.
MAX_SEED = 2**63 - 1
# Largest data.num_examples (and data.eval_size) of a generated set. At 100,000 rows tiny-facts, the
# largest per row, generates in 3 s and tokenizes in 41 s into 1.2 GB on a 2-core CPU; 1,000,000
# would take about 10x that (2.4 GB for the rows alone): no longer a tiny run. 5x the largest size
# the tiny experiments use (20,000 on tiny-facts' capacity curve).
MAX_GENERATED_EXAMPLES = 100_000
# Names the validators check against, as plain tuples so that this module imports nothing of
# lora_lab (tests/test_config.py holds them against the registries they mirror).
TINY_DATA_SETS = ("tiny-tulu", "tiny-openthoughts", "tiny-facts", "tiny-facts-heldout", "tiny-math")  # tiny/world.py
REAL_DATA_SETS = ("tulu3", "openthoughts3", "math", "gsm8k", "deepmath")  # data.py REAL_SETS
DATA_SETS = TINY_DATA_SETS + REAL_DATA_SETS  # data.py DATASETS
RL_DATA_SETS = ("tiny-math", "gsm8k", "math", "deepmath")  # rewards.py TASKS: sets with a verifiable reward
# What `lora-lab analyze` may be told to analyse an experiment as (run.analysis): the paper's kinds
# (curves.py KINDS) and explore, by what varies among the runs (curves.py EXPLORE, explore.py).
ANALYSES = ("early_rank", "rank", "batch", "layers", "rl", "invariance", "capacity", "width", "alpha", "explore")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key and the fix."""


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def _positive(x: float) -> bool:
    """A finite number > 0 (nan and inf fail: `x > 0` alone lets inf through)."""
    return math.isfinite(x) and x > 0


def _non_negative(x: float) -> bool:
    return math.isfinite(x) and x >= 0


def _check_seed(key: str, seed: int) -> None:
    _check(0 <= seed <= MAX_SEED, key, seed, f"must be an integer in 0..{MAX_SEED} (2**63 - 1)")


@dataclass
class ModelConfig:
    # A built-in preset (tiny-llama, tiny-moe), a Hugging Face hub id (org/name) or a local directory.
    name: str = "tiny-llama"
    # auto: bf16 on GPU, fp32 on CPU.
    dtype: str = "auto"
    trust_remote_code: bool = False
    revision: Optional[str] = None
    # Seed of the random init of a tiny preset that has no pretrained weights yet.
    init_seed: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "must be a preset, a hub id or a local directory")
        _check(self.dtype in DTYPES, "model.dtype", self.dtype, f"choose one of {', '.join(DTYPES)}")
        _check_seed("model.init_seed", self.init_seed)
        if self.name in TINY_PRESETS:
            return
        path = Path(self.name).expanduser()
        if self.name.startswith(("/", ".", "~")) or path.exists():
            _check(path.is_dir(), "model.name", self.name,
                   "local model directory does not exist; give an existing directory or a hub id like meta-llama/Llama-3.2-1B")
            _check((path / "config.json").exists(), "model.name", self.name, "local model directory has no config.json")
            return
        _check(bool(_HUB_ID.match(self.name)), "model.name", self.name,
               f"unknown model; use a preset ({', '.join(TINY_PRESETS)}), a hub id (org/name) or a local directory")


@dataclass
class DataConfig:
    # A data set preset (conf/data/): generated tiny sets, or real ones (tulu3, gsm8k, ...).
    name: str = "tiny-tulu"
    # Training examples: the size knob of a generated set; for a real one, a seeded subset of at
    # most this many rows (null: all; a smaller file trains on all it has, with a note on stderr).
    num_examples: Optional[int] = 2048
    # Held-out examples for eval loss.
    eval_size: int = 128
    # Longest sequence in tokens; a longer one is cut or dropped (data.truncation).
    max_seq_len: int = 256
    # Seed of a generator or of a subset draw (not of the batch order: that is train.seed).
    seed: int = 1234
    # Real sets: local files or directory (jsonl, json, parquet) instead of the hub. A file is the
    # training split; a directory reads like a hub repository (README configs, or train*/test* files).
    path: Optional[str] = None
    # Real sets: hub id, its config name, and the split to train on.
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "train"
    # Held-out split name; null: hold out eval_size examples of the training split (seeded).
    eval_split: Optional[str] = None
    # Difficulty levels to keep (tiny-math, MATH); null: all.
    levels: Optional[list[int]] = None
    # Answer form of math sets: gsm8k ("#### 42"), math ("\\boxed{42}") or mixed.
    answer_format: str = "mixed"
    # A real set whose malformed rows exceed this fraction (of the rows read) fails before the run;
    # below it they are skipped and counted on stderr.
    max_bad_fraction: float = 0.01
    # The chat template conversations are rendered with: null, the tokenizer's own; a shipped preset
    # (llama3, chatml: with {% generation %} markers, so assistant masks are exact); or a .jinja file.
    # Base models (Llama-3.1-8B, Llama-3.2-1B) ship none and need one.
    chat_template: Optional[str] = None
    # A sequence longer than max_seq_len: head keeps its first max_seq_len tokens (the tail, a long
    # answer's end included, is lost; a row left with no assistant token does not train); drop leaves
    # the row out (counted on stderr; an error if no row is left).
    truncation: str = "head"
    # tiny-facts only: also evaluate on eval_size unseen entities (tiny-facts-heldout's eval split) at
    # every eval, logged as eval_unseen_loss: C9's no-knowledge loss from the same run. Training is unchanged.
    eval_unseen: bool = False

    def __post_init__(self) -> None:
        _check(self.truncation in TRUNCATIONS, "data.truncation", self.truncation, f"choose one of {', '.join(TRUNCATIONS)}")
        if self.chat_template is not None and self.chat_template not in CHAT_TEMPLATES:
            _check(self.chat_template.endswith(".jinja") and Path(self.chat_template).expanduser().is_file(),
                   "data.chat_template", self.chat_template,
                   f"choose a preset ({', '.join(CHAT_TEMPLATES)}) or an existing .jinja file")
        _check(self.name in DATA_SETS, "data.name", self.name, f"unknown data set; choose one of {', '.join(sorted(DATA_SETS))}")
        _check(self.num_examples is None or self.num_examples > 0, "data.num_examples", self.num_examples, "must be > 0 (or null for all)")
        _check(self.eval_size > 0, "data.eval_size", self.eval_size, "must be > 0")
        _check(self.max_seq_len >= 8, "data.max_seq_len", self.max_seq_len, "must be >= 8")
        _check_seed("data.seed", self.seed)
        _check(self.answer_format in ("gsm8k", "math", "mixed"), "data.answer_format", self.answer_format,
               "choose one of gsm8k, math, mixed")
        _check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "must be in [0, 1]")
        _check(not self.eval_unseen or self.name == "tiny-facts", "data.eval_unseen", self.eval_unseen,
               f"only tiny-facts has an unseen-facts split (data={self.name}); drop it or set data=tiny-facts")
        if self.name in TINY_DATA_SETS:
            # A generated set holds every row in memory, and its size is only a number: unbounded, a
            # few zeros too many (100000000) fill the machine's memory before anything reports it.
            for key, n in (("data.num_examples", self.num_examples), ("data.eval_size", self.eval_size)):
                _check(n is None or n <= MAX_GENERATED_EXAMPLES, key, n,
                       f"a generated set has at most {MAX_GENERATED_EXAMPLES:,} examples; lower it")
            _check(self.path is None, "data.path", self.path,
                   f"data.path is for real data sets; tiny-* sets are generated: drop data.path, or read the "
                   f"file as the real set of its schema (data={'|'.join(REAL_DATA_SETS)})")
        if self.path is not None:
            _check(Path(self.path).expanduser().exists(), "data.path", self.path, "no such file or directory")
        elif self.name in REAL_DATA_SETS:
            _check(bool(self.hub_id and _HUB_ID.match(self.hub_id)), "data.hub_id", self.hub_id,
                   f"data={self.name} needs a hub id (org/name) or data.path=<local jsonl/parquet file or directory>")


# How alpha follows the rank r, and so the scale of an adapter: `fixed` alpha, scale alpha / r (the
# paper's); `rank` alpha = lora.alpha * r, scale lora.alpha (lora.alpha = 1 is "alpha = r");
# `sqrt_rank` alpha proportional to sqrt(r), scale alpha / sqrt(r) (rsLoRA).
ALPHA_MODES = ("fixed", "rank", "sqrt_rank")


def lora_scale(alpha: float, alpha_mode: str, rank: int) -> float:
    """The factor of B A in an adapter of this rank under `lora.alpha_mode`."""
    _check(alpha_mode in ALPHA_MODES, "lora.alpha_mode", alpha_mode, f"choose one of {', '.join(ALPHA_MODES)}")
    if alpha_mode == "rank":
        return float(alpha)
    if alpha_mode == "sqrt_rank":
        return alpha / math.sqrt(rank)
    return alpha / rank


@dataclass
class LoraConfig:
    rank: int = 8
    # Paper setting: alpha = 32 for every rank, scale alpha / rank ("LoRA Without Regret", hyperparameters).
    alpha: float = 32.0
    # How alpha follows the rank (ALPHA_MODES); fixed, scale alpha / r, is the paper's.
    alpha_mode: str = "fixed"
    layers: str = "all"
    # LoRA on the unembedding (lm_head) as well: the paper's runs did (Tinker's train_unembed=True).
    unembed: bool = True
    # A ~ U(-s/sqrt(d_in), s/sqrt(d_in)) with s = init_a_scale; 1.0 is peft's default init.
    init_a_scale: float = 1.0
    # Per-matrix LR multipliers (claim C8 varies them); 1.0 is the paper's single LR.
    lr_a_mult: float = 1.0
    lr_b_mult: float = 1.0

    def __post_init__(self) -> None:
        _check(isinstance(self.rank, int) and 1 <= self.rank <= MAX_RANK, "lora.rank", self.rank,
               f"must be an integer in 1..{MAX_RANK}")
        _check(self.alpha > 0 and math.isfinite(self.alpha), "lora.alpha", self.alpha, "must be a finite number > 0")
        _check(self.alpha_mode in ALPHA_MODES, "lora.alpha_mode", self.alpha_mode, f"choose one of {', '.join(ALPHA_MODES)}")
        _check(self.layers in LAYER_SETS, "lora.layers", self.layers, f"unknown layer set; choose one of {', '.join(LAYER_SETS)}")
        _check(_positive(self.init_a_scale), "lora.init_a_scale", self.init_a_scale, "must be a finite number > 0")
        _check(_positive(self.lr_a_mult), "lora.lr_a_mult", self.lr_a_mult, "must be a finite number > 0")
        _check(_positive(self.lr_b_mult), "lora.lr_b_mult", self.lr_b_mult, "must be a finite number > 0")

    def scale(self, rank: int) -> float:
        """The factor of B A in an adapter of this rank (lora.rank, or a per-expert rank)."""
        return lora_scale(self.alpha, self.alpha_mode, rank)


@dataclass
class OptimConfig:
    # Constant LR, no warmup or decay (the paper's setting).
    lr: float = 1e-3
    # Sequences per optimizer step.
    batch_size: int = 32
    # Sequences per forward/backward (gradient accumulation); null: automatic (see `micro`).
    micro_batch_size: Optional[int] = None
    # Tinker's Adam defaults, under which the paper's runs trained (docs/design.md, "Paper settings").
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-12
    weight_decay: float = 0.0
    # Clip the global gradient norm to this value; 0: no clipping (the paper does not clip).
    grad_clip: float = 0.0

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", self.lr, "must be a finite number > 0")
        _check(self.batch_size > 0, "optim.batch_size", self.batch_size, "must be > 0")
        if self.micro_batch_size is not None:
            _check(self.micro_batch_size > 0, "optim.micro_batch_size", self.micro_batch_size, "must be > 0")
            _check(self.batch_size % self.micro_batch_size == 0, "optim.micro_batch_size", self.micro_batch_size,
                   f"must divide optim.batch_size={self.batch_size}")
        _check(0 <= self.beta1 < 1, "optim.beta1", self.beta1, "must be in [0, 1)")
        _check(0 <= self.beta2 < 1, "optim.beta2", self.beta2, "must be in [0, 1)")
        _check(_non_negative(self.adam_eps), "optim.adam_eps", self.adam_eps, "must be a finite number >= 0")
        _check(_non_negative(self.weight_decay), "optim.weight_decay", self.weight_decay, "must be a finite number >= 0")
        _check(_non_negative(self.grad_clip), "optim.grad_clip", self.grad_clip,
               "must be a finite number >= 0 (0 turns clipping off)")

    def micro_for(self, world_size: int = 1) -> int:
        """Sequences per forward/backward in each of world_size processes (each takes batch_size /
        world_size sequences of a step; the run's pre-flight checks that they divide evenly, see
        lora_lab/distributed.py). null: the largest divisor of the per-process share up to 8.

        Each step's sequences are sorted by length before they are split, so a micro-batch pads
        only to its own longest sequence: on the 2-core CPU the forward and backward of a tiny-tulu
        step of 32 took 272 ms in sorted micro-batches of 8 against 334 ms as one batch (median
        ratio 0.81, experiments/bench_micro_batches.py). The step's loss and gradient are the same
        up to float summation order."""
        if self.micro_batch_size:
            return self.micro_batch_size
        local = self.batch_size // max(world_size, 1)
        return max(d for d in range(1, min(8, local) + 1) if local % d == 0)


@dataclass
class TrainConfig:
    # Stop after this many optimizer steps; null: train.epochs passes over the data.
    max_steps: Optional[int] = None
    epochs: int = 1
    # Eval loss on the held-out split every this many steps (and at the end); 0: only at the end.
    eval_every: int = 50
    # Write a resumable checkpoint every this many steps; 0: only at the end.
    checkpoint_every: int = 50
    seed: int = 0
    # A train loss above this (or non-finite) ends the run with status "diverged"; inf: only a
    # non-finite loss does.
    diverge_loss: float = 20.0
    device: str = "auto"

    def __post_init__(self) -> None:
        _check(self.max_steps is None or self.max_steps > 0, "train.max_steps", self.max_steps, "must be > 0 (or null for epochs)")
        _check(self.epochs > 0, "train.epochs", self.epochs, "must be > 0")
        _check(self.eval_every >= 0, "train.eval_every", self.eval_every, "must be >= 0 (0: eval at the end only)")
        _check(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every, "must be >= 0 (0: at the end only)")
        _check_seed("train.seed", self.seed)
        _check(self.diverge_loss > 0, "train.diverge_loss", self.diverge_loss,
               "must be a number > 0 (inf: only a non-finite loss counts as diverged)")
        _check(self.device in DEVICES, "train.device", self.device, f"choose one of {', '.join(DEVICES)}")


RL_SAMPLERS = ("cache", "generate", "vllm")  # lora_lab/sampler.py SAMPLERS, and lora_lab/vllm_sampler.py
VLLM_MAX_TEMPERATURE = 2.0  # vLLM's SamplingParams refuse a higher temperature


@dataclass
class RLConfig:
    """Policy-gradient RL (task=rl, lora_lab/rl.py). One RL step samples group_size completions for
    each of prompts_per_step training problems, then takes updates_per_batch optimizer steps on it."""

    # Completions per prompt; their mean reward is the baseline of the prompt's advantages.
    group_size: int = 8
    prompts_per_step: int = 8
    max_new_tokens: int = 48
    # Sampling temperature; the learner's log-probs use the same temperature, so on-policy ratios are 1.
    temperature: float = 1.0
    # Optimizer steps per sampled batch: it is split into this many slices of whole groups, one step
    # each; the importance ratio corrects for the slices sampled by an older policy.
    updates_per_batch: int = 1
    # Divide advantages by the group's reward std (GRPO); off: the paper's plain group centring.
    normalize_std: bool = False
    # PPO-style clipping of the ratio to [1 - eps, 1 + eps]; null: off (the paper's objective).
    clip_eps: Optional[float] = None
    # Greedy decoding length for eval_accuracy on data.eval_size held-out problems; null: max_new_tokens.
    eval_max_new_tokens: Optional[int] = None
    # Validation problems held out besides the data.eval_size test problems, scored like them at every
    # eval (val_accuracy): an arm's LR is chosen on these, the claim judged on the test problems (C5).
    # 0: none (the LR is then chosen on the test problems themselves).
    val_size: int = 0
    # Appended to the problem's user turn, e.g. to ask a base model for a \boxed{} answer; null: none.
    instruction: Optional[str] = None
    # How completions are drawn (lora_lab/sampler.py): cache (a decoding loop on the KV cache that
    # shares each prompt's prefill among its samples), generate (transformers' generate) or vllm (a
    # vLLM engine that gets the LoRA adapter each step; pip install 'lora-lab[vllm]').
    sampler: str = "cache"
    # Most sequences sampled in one forward pass (cache, generate: chunks of whole groups; vllm: its
    # max_num_seqs). Must hold a group: >= group_size.
    sample_batch: int = 256
    # rl.sampler=vllm: the fraction of the GPU's memory the vLLM engine may take (weights and KV
    # cache); the learner shares the GPU and keeps the rest.
    vllm_gpu_memory: float = 0.4

    def __post_init__(self) -> None:
        _check(self.group_size >= 2, "rl.group_size", self.group_size,
               "must be >= 2 (a group of one has a zero advantage: nothing to learn)")
        _check(self.prompts_per_step > 0, "rl.prompts_per_step", self.prompts_per_step, "must be > 0")
        _check(self.max_new_tokens > 0, "rl.max_new_tokens", self.max_new_tokens, "must be > 0")
        _check(self.temperature > 0 and math.isfinite(self.temperature), "rl.temperature", self.temperature,
               "must be a finite number > 0 (sampling needs spread; eval decodes greedily)")
        _check(self.updates_per_batch > 0 and self.prompts_per_step % self.updates_per_batch == 0,
               "rl.updates_per_batch", self.updates_per_batch,
               f"must be > 0 and divide rl.prompts_per_step={self.prompts_per_step} (each update takes whole groups)")
        _check(self.clip_eps is None or 0 < self.clip_eps < 1, "rl.clip_eps", self.clip_eps,
               "must be in (0, 1), or null for no clipping")
        _check(self.eval_max_new_tokens is None or self.eval_max_new_tokens > 0, "rl.eval_max_new_tokens",
               self.eval_max_new_tokens, "must be > 0 (or null for rl.max_new_tokens)")
        _check(isinstance(self.val_size, int) and self.val_size >= 0, "rl.val_size", self.val_size,
               "must be an integer >= 0 (validation problems held out besides the test ones; 0: none)")
        _check(self.sampler in RL_SAMPLERS, "rl.sampler", self.sampler, f"choose one of {', '.join(RL_SAMPLERS)}")
        _check(self.sample_batch >= self.group_size, "rl.sample_batch", self.sample_batch,
               f"must be >= rl.group_size={self.group_size} (a prompt's samples share one forward pass)")
        _check(0 < self.vllm_gpu_memory < 1, "rl.vllm_gpu_memory", self.vllm_gpu_memory,
               "must be a fraction in (0, 1) of the GPU's memory")
        _check(self.sampler != "vllm" or self.temperature <= VLLM_MAX_TEMPERATURE, "rl.temperature", self.temperature,
               f"vLLM samples at temperatures up to {VLLM_MAX_TEMPERATURE:g} (rl.sampler=vllm)")


@dataclass
class DistConfig:
    """How a run is laid out on its devices (lora_lab/distributed.py); not what it computes, so it is
    not part of the run id. The number of processes comes from torchrun or SLURM, not from here."""

    # Recompute each decoder layer's activations in the backward instead of keeping them (less
    # memory, about a third more compute); one process or several.
    activation_checkpointing: bool = False
    # On CUDA, refuse (exit 2, before the weights load) a run whose memory estimate
    # (lora_lab/memory.py memory_estimate) exceeds the GPU's memory; false: try it anyway.
    memory_check: bool = True


@dataclass
class RunConfig:
    # Run directories go to <root>/<experiment>/<run_id>/.
    root: str = "runs"
    experiment: str = "default"
    # Override the derived run id (rarely needed; the default finds finished runs again).
    id: Optional[str] = None
    # Keep tokenized data under <root>/.cache/tokens/ for every run that reads the same rows with the
    # same tokenizer (lora_lab/token_cache.py); false: tokenize in every run. Never part of a run's id.
    token_cache: bool = True
    # How `lora-lab analyze` analyses the experiment, read back from its runs' config.yaml: names of
    # ANALYSES, e.g. [rank] (as tiny/rank is, its claims judged) or [explore] (by what varies); empty:
    # by the experiment's name (tiny/rank is rank), and an experiment of no known name by what varies.
    # Never part of a run's id.
    analysis: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(bool(self.root), "run.root", self.root, "must be a directory path")
        # A name below run.root, never a path out of it (an absolute one would write anywhere).
        _check(bool(re.fullmatch(r"[\w.\-/]+", self.experiment or "")) and ".." not in self.experiment
               and not self.experiment.startswith("/"),
               "run.experiment", self.experiment, "a name below run.root: letters, digits, '.', '-', '_' and '/' "
               "(not at the start), no '..'")
        if self.id is not None:
            _check(bool(re.fullmatch(r"[\w.\-]+", self.id)), "run.id", self.id, "use letters, digits, '.', '-' and '_' only")
        names = list(self.analysis)
        _check(all(a in ANALYSES for a in names) and len(set(names)) == len(names), "run.analysis", names,
               f"a list of analysis names, each once: {', '.join(ANALYSES)} ([]: by the experiment's name)")


@dataclass
class LoggerConfig:
    wandb: str = "disabled"
    wandb_project: str = "lora-lab"
    wandb_entity: Optional[str] = None
    # auto: a progress bar on a terminal, plain periodic lines otherwise.
    progress: str = "auto"
    # Seconds between plain progress lines.
    progress_every_s: float = 10.0

    def __post_init__(self) -> None:
        _check(self.wandb in WANDB_MODES, "logger.wandb", self.wandb, f"choose one of {', '.join(WANDB_MODES)}")
        _check(self.progress in PROGRESS_MODES, "logger.progress", self.progress, f"choose one of {', '.join(PROGRESS_MODES)}")
        _check(_non_negative(self.progress_every_s), "logger.progress_every_s", self.progress_every_s,
               "must be a finite number of seconds >= 0 (0: a line every step)")


@dataclass
class Config:
    method: str = "lora"
    task: str = "sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, f"choose one of {', '.join(METHODS)}")
        _check(self.task in TASKS, "task", self.task, f"choose one of {', '.join(TASKS)}")
        if self.task == "rl":
            _check(self.data.name in RL_DATA_SETS, "data.name", self.data.name,
                   f"task=rl needs a data set with a verifiable reward: {', '.join(RL_DATA_SETS)}")
            default_bs = OptimConfig.__dataclass_fields__["batch_size"].default
            _check(self.optim.batch_size == default_bs, "optim.batch_size", self.optim.batch_size,
                   f"is unused with task=rl (a step is rl.prompts_per_step x rl.group_size completions); drop it (default {default_bs})")
            if self.data.name in TINY_DATA_SETS:  # generated in memory, like data.eval_size's rows
                _check(self.rl.val_size <= MAX_GENERATED_EXAMPLES, "rl.val_size", self.rl.val_size,
                       f"a generated set has at most {MAX_GENERATED_EXAMPLES:,} examples; lower it")
            # vLLM gets the policy as a LoRA adapter each step; FullFT would have to push every weight.
            _check(self.rl.sampler != "vllm" or self.method == "lora", "rl.sampler", self.rl.sampler,
                   "syncs a LoRA adapter each step and does not take FullFT's full weights; "
                   "use method=lora, or rl.sampler=cache with method=full")
        if self.method == "full":
            # LoRA keys would be silently ignored by a full fine-tuning run; a sweep that varies
            # lora.rank must not produce several identical FullFT runs under different names.
            for f in dataclasses.fields(LoraConfig):
                value, default = getattr(self.lora, f.name), f.default
                _check(value == default, f"lora.{f.name}", value,
                       f"is ignored with method=full; drop it or set method=lora (default {default!r})")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_trainable(cfg: Config) -> None:
    """What a config must hold to train, beyond being a valid config: a step's batch of
    optim.batch_size sequences (task=rl: rl.prompts_per_step problems) fits in data.num_examples.
    Not in Config.__post_init__: `lora-lab plan`, analysis scripts and data tests compose configs
    that only describe a data set, with a small num_examples and the default batch. The rows actually
    read (a real set may hold fewer than num_examples) are counted again before the model loads
    (lora_lab/data.py check_rows)."""
    n = cfg.data.num_examples
    if n is None:
        return
    if cfg.task == "rl":
        _check(cfg.rl.prompts_per_step <= n, "rl.prompts_per_step", cfg.rl.prompts_per_step,
               f"a step takes more problems than the data.num_examples={n} training problems; lower it or raise data.num_examples")
    else:
        _check(cfg.optim.batch_size <= n, "optim.batch_size", cfg.optim.batch_size,
               f"a step takes more sequences than the data.num_examples={n} training examples; lower it or raise data.num_examples")


@dataclass
class SweepGridConfig:
    """`hydra.sweeper` of an experiment file (experiments/<scale>/<figure>.yaml), expanded by
    `lora-lab sweep` (lora_lab/sweep.py): the runs are the union over `grids` (named arms, e.g. a
    LoRA arm and a FullFT arm with their own LR grids) of the Cartesian product of the arm's axes and
    the shared `params`, in Hydra's sweep syntax (`optim.lr: 1e-4,3e-4`). With no grids, `params`
    alone is the grid, as with Hydra's basic sweeper. An arm's `launcher.gpus_per_node` and
    `launcher.nodes` are its runs' SLURM resources, not run overrides. `quick` holds the overrides of
    `lora-lab sweep --quick` / `reproduce --quick` (a smaller grid, fewer steps), applied before the
    command line's."""

    _target_: str = "lora_lab.sweep.expand"
    params: Optional[Dict[str, str]] = None
    grids: Dict[str, Dict[str, str]] = field(default_factory=dict)
    quick: Dict[str, str] = field(default_factory=dict)
    max_batch_size: Optional[int] = None
    refine_factor: Optional[float] = None  # the experiment's refine factor (lora_lab/refine.py); .inf: bracketing only
    refine_score: Optional[str] = None  # SFT arms' score in refinement: final_loss (None) or final_eval_loss


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="hydra/sweeper", name="lora_lab", node=SweepGridConfig, provider="lora_lab")


def one_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span several lines; keep the part that names the key."""
    text = "\n".join(str(e).strip() for e in (exc, exc.__cause__) if e is not None)
    m = re.search(r"Key '([^']+)' not in '([^']+)'.*?full_key: ([\w.]+)", text, re.S)
    if m:
        return f"{m.group(3)}: no such key; see conf/ or lora_lab/config.py for the keys"
    m = re.search(r"Could not find '([\w\-]+)/([^']+)'", text)
    if m:
        group = m.group(1)
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return f"{group}={m.group(2)}: unknown {group} preset; choose one of {', '.join(options)}"
    m = re.search(r"Value '([^']*)' (?:of type '\w+' could not be converted to|is not a valid) (\w+).*?full_key: ([\w.]+)", text, re.S)
    if m:
        return f"{m.group(3)}={m.group(1)!r}: expected a value of type {m.group(2).lower()}"
    m = re.search(r"Error merging override ([\w.]+)=([^\n]*)\n.*?is not a ListConfig", text, re.S)
    if m:
        return f"{m.group(1)}={m.group(2)!r}: expected a list, e.g. {m.group(1)}=[{m.group(2)}]"
    m = re.search(r"full_key: ([\w.]+)", text)
    first = text.splitlines()[0] if text else type(exc).__name__
    return f"{m.group(1)}: {first}" if m else first


def search_path_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """Experiment files live outside conf/ (experiments/<scale>/<figure>.yaml, selected with
    `+experiments=<scale>/<figure>`): put their parent directory on Hydra's search path."""
    if any(o.lstrip("+~").startswith("experiments=") for o in overrides):
        return [f"hydra.searchpath=[file://{EXPERIMENTS_DIR.parent}]"]
    return []


# An experiment may also be any yaml file, named by its path (`lora-lab sweep my_sweep.yaml`,
# `+experiments=path/to/my_sweep.yaml`). Hydra finds a group's option by trying each search path
# entry in turn, so two files of the same name in two directories would shadow one another there:
# each file is put in Hydra's ConfigStore instead, as experiments/_file/<stem>-<hash of its path>.
# The ConfigStore travels with a submitit job (Hydra's singleton state), so SLURM jobs compose it too.
EXPERIMENT_SUFFIXES = (".yaml", ".yml")
FILE_GROUP = "_file"
_PACKAGE_GLOBAL = re.compile(r"#\s*@package\s+_global_\s*$")


def is_experiment_file(name: str) -> bool:
    """Whether an experiment is named by the path of a yaml file rather than as <scale>/<figure>."""
    return str(name).endswith(EXPERIMENT_SUFFIXES)


@dataclass(frozen=True)
class ExperimentFile:
    """An experiment file given by its path, checked and registered with Hydra."""

    path: Path  # resolved
    option: str  # what `+experiments=` selects: _file/<stem>-<hash>
    experiment: str  # run.experiment: the file's own, else derived from the file's name and path
    derived: bool  # the file sets no run.experiment


def _file_error(path: Path, why: str) -> ConfigError:
    return ConfigError(f"experiment file {path}: {why}")


def _grid_values(path: Path, where: str, axes: Any) -> None:
    """A grid's axes: a mapping of keys to one value or a comma-separated string of values. A single
    number or boolean (optim.lr: 1e-3) becomes its string, as the grid's schema holds strings."""
    if axes is None:
        return
    if not isinstance(axes, dict):
        raise _file_error(path, f"{where} must be a mapping of keys to values (optim.lr: 1e-4,3e-4,1e-3)")
    for key, value in axes.items():
        if isinstance(value, (list, dict)):
            raise _file_error(path, f"{where}.{key}: write its values as one comma-separated string "
                                    f"({key}: {','.join(map(str, value)) if isinstance(value, list) else '...'}), "
                                    "not a YAML list or mapping")
        if isinstance(value, (bool, int, float)):
            axes[key] = str(value).lower() if isinstance(value, bool) else str(value)


def experiment_file(name: str | Path) -> ExperimentFile:
    """Read and check an experiment file (relative paths from the current directory) and register
    it with Hydra. ConfigError (one line naming the file and the fix) for a missing file, one without
    the `# @package _global_` header, invalid YAML or a grid that is not a mapping of strings."""
    import yaml

    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise _file_error(Path(name), "no such file; give the path of a .yaml experiment file "
                                      "(lora-lab new-experiment NAME writes one) or a shipped name like tiny/rank")
    text = path.read_text()
    head = [line.strip() for line in text.splitlines()]
    head = head[:next((i for i, line in enumerate(head) if line and not line.startswith("#")), len(head))]
    if not any(_PACKAGE_GLOBAL.fullmatch(line) for line in head):
        raise _file_error(path, "no '# @package _global_' line at the top; add it as the file's first line "
                                "(an experiment sets keys of the whole config)")
    try:
        node = OmegaConf.create(text)  # as Hydra reads a config file (1e-3 is a float)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise _file_error(path, f"not valid YAML{at} ({getattr(exc, 'problem', None) or type(exc).__name__}); "
                                "fix the file") from None
    raw = OmegaConf.to_container(node, resolve=False) if OmegaConf.is_dict(node) else None
    if not isinstance(raw, dict):
        raise _file_error(path, "not a mapping of config keys; see docs/own-sweep.md for the form of an experiment file")
    sweeper = (raw.get("hydra") or {}).get("sweeper") if isinstance(raw.get("hydra"), dict) else None
    if sweeper is not None:
        if not isinstance(sweeper, dict):
            raise _file_error(path, "hydra.sweeper must be a mapping (params, grids, quick)")
        grids = sweeper.get("grids")
        if grids is not None and not isinstance(grids, dict):
            raise _file_error(path, "hydra.sweeper.grids must map arm names to their axes (lora: {method: lora, ...})")
        for arm, axes in (grids or {}).items():
            _grid_values(path, f"hydra.sweeper.grids.{arm}", axes)
        for part in ("params", "quick"):
            _grid_values(path, f"hydra.sweeper.{part}", sweeper.get(part))
    run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
    stem = re.sub(r"[^\w\-]", "_", path.stem)
    derived = f"{stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    option = f"{FILE_GROUP}/{derived}"
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group=f"experiments/{FILE_GROUP}", name=derived, node=OmegaConf.create(raw),
                                 package="_global_", provider="lora_lab")
    given = run.get("experiment")
    return ExperimentFile(path, option, str(given) if given else derived, not given)


def experiment_overrides(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The overrides with each `+experiments=<file>.yaml` replaced by the registered file
    (experiment_file) and, where the file names no run.experiment and the overrides do not either,
    `run.experiment=<stem>-<hash>` after it, so that the runs' config.yaml names their directory."""
    out: list[str] = []
    named = any(o.lstrip("+~").startswith("run.experiment=") for o in overrides)
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key.lstrip("+~") == "experiments" and is_experiment_file(value):
            ef = experiment_file(value)
            out.append(f"{key}={ef.option}")
            if ef.derived and not named:
                out.append(f"run.experiment={ef.experiment}")
        else:
            out.append(o)
    return out


def compose_dict(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config",
                 return_hydra_config: bool = False) -> Any:
    """The composed DictConfig (with the `hydra` node if asked); ConfigError on any bad override."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if not CONF_DIR.is_dir():
        raise ConfigError(f"LORA_LAB_CONF={CONF_DIR}: config directory not found; run from a lora-lab checkout")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=[*search_path_overrides(overrides), *experiment_overrides(overrides)],
                                 return_hydra_config=return_hydra_config)
    except ConfigError:
        raise
    except Exception as exc:  # hydra's override grammar, missing groups, type errors
        raise ConfigError(one_line(exc)) from None


def compose(overrides: list[str] | tuple[str, ...] = (), config_name: str = "config") -> Config:
    """Compose conf/<config_name>.yaml with command-line style overrides into a validated Config.

    Raises ConfigError (one line naming the key) for any bad key or value."""
    return from_dictconfig(compose_dict(overrides, config_name))


def _unknown_key(node: Any, schema: type, prefix: str = "") -> str | None:
    """The first key of a (nested) plain dict that the dataclass schema lacks, as a dotted path."""
    if not isinstance(node, dict):
        return None
    hints = get_type_hints(schema)
    for key, value in node.items():
        path = f"{prefix}{key}"
        if key not in hints:
            return path
        if dataclasses.is_dataclass(hints[key]):
            found = _unknown_key(value, hints[key], f"{path}.")
            if found:
                return found
    return None


def from_dictconfig(dcfg: Any) -> Config:
    """DictConfig (or plain dict) -> validated Config dataclass."""
    # A key added with `+key=value` (or `++`) reaches here inside a structured node: the merge below
    # keeps it and to_object sets it as a stray attribute, so the run would silently ignore it.
    # `hydra` is Hydra's own node (return_hydra_config), not part of a run's config.
    if OmegaConf.is_config(dcfg):
        if "hydra" in dcfg:
            dcfg = OmegaConf.masked_copy(dcfg, [k for k in dcfg if k != "hydra"])
        raw = OmegaConf.to_container(dcfg, resolve=False)
    else:
        dcfg = raw = {k: v for k, v in dict(dcfg).items() if k != "hydra"}
    unknown = _unknown_key(raw, Config)
    if unknown:
        raise ConfigError(f"{unknown}: no such key; see conf/ or lora_lab/config.py for the keys")
    try:
        schema = OmegaConf.structured(Config)
        merged = OmegaConf.merge(schema, dcfg)
        cfg = OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except Exception as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(one_line(exc)) from None
    assert isinstance(cfg, Config)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a run's config.yaml back into a Config."""
    return from_dictconfig(OmegaConf.load(path))


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
