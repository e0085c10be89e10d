"""rl.sampler=vllm: RL's completions drawn by a vLLM engine in the learner's process, behind the same
`Sampler` protocol as the tiny samplers (lora_lab/sampler.py), for the paper's scale.

    pip install 'lora-lab[vllm]'        # Linux with a CUDA GPU; vLLM brings the torch build it needs
    lora-lab train +experiments=paper/rl_gsm8k_llama8b rl.sampler=vllm

How it works, per RL step:

- `sync(model)`: the learner's LoRA adapter is written in peft's format (lora_lab.lora.export_peft,
  the same files as a run's `adapter/`) to a fresh directory below a temporary one, and becomes a
  new `LoRARequest(name, id, path)` with an id never used before (vLLM caches adapters by id, so a
  reused id would serve stale weights); the previous adapter's directory is deleted. Only the
  adapter moves: the engine keeps the frozen base weights it loaded once.
- `sample(prompts, n, max_new_tokens, temperature)`: one `LLM.generate` call with the prompts as
  token ids (`{"prompt_token_ids": ...}`, so vLLM applies no chat template and no tokenizer of its
  own), `SamplingParams(n=group size, temperature, max_tokens, logprobs=0, stop_token_ids=the turn
  terminators, top_p=1, top_k=0, min_p=0, detokenize=False)` and the current adapter. `logprobs=0`
  returns the sampled token's own log-prob; the engine is built with
  `logprobs_mode="processed_logprobs"`, so that log-prob is of softmax(logits / temperature), the
  distribution sampled from, the denominator the importance ratio needs (vLLM's default,
  raw_logprobs, is before temperature). `generation_config="vllm"` keeps the model's
  generation_config.json sampling defaults (top_p, top_k, repetition penalty) out of the draw.
  Each output becomes a `Completion` cut after its first terminator (vLLM keeps the stop token in
  `token_ids`), with the text before it decoded by lora-lab's tokenizer.

The engine (`engine_kwargs`): the base model (`models.base_reference`: a hub id, a local directory
or a tiny preset's shipped directory), `enable_lora=True`, `max_lora_rank` the smallest rank vLLM's
kernels accept that holds lora.rank (`VLLM_LORA_RANKS`), `max_loras=1`, `max_num_seqs=rl.sample_batch`,
`gpu_memory_utilization=rl.vllm_gpu_memory` (the learner shares the GPU), `max_model_len` the longest
prompt plus the longest completion, the learner's dtype (auto: bf16), seeded with train.seed.

Refused before any model loads (a one-line ConfigError, exit 2): vLLM not installed (`check`);
method=full (config.py: vLLM would need every weight pushed each step, which this sampler does not
do); an adapter on MoE experts (peft's `target_parameters` on fused experts, which vLLM's adapter
loader does not read). Differences from the tiny samplers: vLLM's random draws are its own (seeded
per engine), so a resumed run does not re-draw the samples an uninterrupted one would have; its
bf16 kernels give log-probs a little off the learner's, which the `kl` metric shows and the
importance ratio corrects. A module the engine cannot adapt (vLLM ignores, with a warning, an
adapter module its model class does not support, e.g. lm_head on some architectures) makes the
sampler's policy differ from the learner's: `kl` and `ratio_std` grow instead of staying near 0.

Everything here but the two calls into vLLM (`LLM(...)` and `generate`) is plain Python on plain
values, tested without vLLM (tests/test_vllm_sampler.py) on objects shaped like its RequestOutput.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from lora_lab.config import Config, ConfigError
from lora_lab.sampler import Completion, completion

# The max_lora_rank values vLLM's LoRA kernels accept (vllm/config/lora.py); an adapter may have any
# rank up to it.
VLLM_LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
INSTALL = "pip install 'lora-lab[vllm]'"


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check(cfg: Config) -> None:
    """Pre-flight of rl.sampler=vllm, before any model loads: a ConfigError naming rl.sampler when
    vLLM cannot be imported here, or when the adapter sits on MoE experts."""
    if cfg.task != "rl" or cfg.rl.sampler != "vllm":
        return
    if not vllm_available():
        raise ConfigError(f"rl.sampler='vllm': vLLM is not installed in this environment; {INSTALL} "
                          f"(Linux with a CUDA GPU), or use rl.sampler=cache")
    from lora_lab.models import model_config

    arch = model_config(cfg.model)
    arch = getattr(arch, "text_config", None) or arch
    if getattr(arch, "num_experts", None) and cfg.lora.layers in ("mlp", "all"):
        raise ConfigError(f"rl.sampler='vllm': {cfg.model.name} is a mixture of experts and lora.layers="
                          f"{cfg.lora.layers} adapts its experts, an adapter vLLM cannot load; use rl.sampler=cache "
                          f"or lora.layers=attn")


# ----------------------------------------------------------------------------- requests (pure)


def max_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds a rank-`rank` adapter."""
    for r in VLLM_LORA_RANKS:
        if rank <= r:
            return r
    raise ConfigError(f"lora.rank={rank}: above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def vllm_dtype(dtype: str) -> str:
    """model.dtype as vLLM names it; auto is bf16, what the learner computes in on a GPU."""
    return "bfloat16" if dtype == "auto" else dtype


def engine_kwargs(cfg: Config, model: str) -> dict[str, Any]:
    """Keyword arguments of vllm.LLM for this run's sampler; `model` is the base model's name or
    directory (models.base_reference)."""
    rl = cfg.rl
    longest = max(rl.max_new_tokens, rl.eval_max_new_tokens or 0)
    kw: dict[str, Any] = dict(
        model=model, dtype=vllm_dtype(cfg.model.dtype), trust_remote_code=cfg.model.trust_remote_code,
        seed=cfg.train.seed % 2**31, enable_lora=True, max_lora_rank=max_lora_rank(cfg.lora.rank), max_loras=1,
        max_num_seqs=rl.sample_batch, gpu_memory_utilization=rl.vllm_gpu_memory,
        max_model_len=cfg.data.max_seq_len + longest, logprobs_mode="processed_logprobs", generation_config="vllm",
        enable_prefix_caching=True)
    if cfg.model.revision and not Path(model).is_dir():
        kw["revision"] = cfg.model.revision
    return kw


def sampling_kwargs(n: int, max_new_tokens: int, temperature: float, stop_ids: Iterable[int]) -> dict[str, Any]:
    """Keyword arguments of vllm.SamplingParams: n samples from the full softmax(logits /
    temperature) (temperature 0: greedy), each stopping at its first terminator or after
    max_new_tokens, with the sampled token's log-prob and no detokenizing (lora-lab decodes)."""
    if n < 1 or max_new_tokens < 1 or temperature < 0:
        raise ValueError(f"sample: n={n}, max_new_tokens={max_new_tokens} must be >= 1 and temperature={temperature} >= 0")
    return dict(n=n, temperature=float(temperature), top_p=1.0, top_k=0, min_p=0.0, max_tokens=max_new_tokens,
                logprobs=0, stop_token_ids=sorted(set(stop_ids)), detokenize=False)


def token_prompts(prompts: Sequence[Sequence[int]]) -> list[dict[str, list[int]]]:
    """Prompts as vLLM's TokensPrompt (a TypedDict): token ids, no template, no tokenizer."""
    return [{"prompt_token_ids": [int(t) for t in p]} for p in prompts]


def adapter_name(version: int) -> tuple[str, int]:
    """The LoRARequest name and id of the adapter of `sync` number `version` (1, 2, ...): ids are
    never reused, 0 is not an adapter id in vLLM."""
    if version < 1:
        raise ValueError(f"version={version}: must be >= 1")
    return f"policy-{version}", version


def sampled_logprobs(output: Any) -> list[float]:
    """The log-prob vLLM gave each sampled token of a CompletionOutput: `logprobs[t]` maps token
    ids (the sampled one always among them) to objects with a `.logprob`."""
    if output.logprobs is None:
        raise RuntimeError("vLLM returned no log-probs: the request needs SamplingParams(logprobs=0)")
    tokens = list(output.token_ids)
    if len(output.logprobs) != len(tokens):
        raise RuntimeError(f"vLLM returned {len(output.logprobs)} log-probs for {len(tokens)} tokens")
    return [float(output.logprobs[t][tok].logprob) for t, tok in enumerate(tokens)]


def to_completions(outputs: Sequence[Any], n: int, stop_ids: Iterable[int], decode: Callable[[list[int]], str],
                   offset: int = 0) -> list[Completion]:
    """vLLM's RequestOutputs (one per prompt, in prompt order, each with n CompletionOutputs) ->
    Completions, prompt-major, cut after the first terminator. A completion that vLLM stopped
    (finish_reason "stop") counts as finished even if its last token is not among `stop_ids`."""
    stops = sorted(set(stop_ids))
    out: list[Completion] = []
    for i, request in enumerate(outputs):
        samples = sorted(request.outputs, key=lambda o: o.index)
        if len(samples) != n:
            raise RuntimeError(f"vLLM returned {len(samples)} completions of prompt {offset + i}, not n={n}")
        for o in samples:
            c = completion(offset + i, list(o.token_ids), sampled_logprobs(o), stops, decode)
            c.finished = c.finished or getattr(o, "finish_reason", None) == "stop"
            out.append(c)
    return out


# ----------------------------------------------------------------------------- the sampler


class VLLMSampler:
    """The Sampler protocol on a vLLM engine (see the module docstring). `engine`: a vllm.LLM, or
    anything with its `generate`; `export(dir)` writes the learner's adapter there in peft's format;
    `sampling_params` and `lora_request` build vLLM's SamplingParams and LoRARequest (default: vLLM's
    own, imported when first used)."""

    def __init__(self, engine: Any, tokenizer, stop_ids: Iterable[int], export: Callable[[Path], Any],
                 sampling_params: Callable[..., Any] | None = None, lora_request: Callable[..., Any] | None = None,
                 workdir: str | Path | None = None):
        self.engine, self.tok, self.stop_ids, self.export = engine, tokenizer, sorted(set(stop_ids)), export
        self._params, self._lora = sampling_params, lora_request
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="lora-lab-vllm-"))
        self.version = 0
        self.adapter: Any = None  # the current LoRARequest
        self.adapter_dir: Path | None = None

    @classmethod
    def build(cls, cfg: Config, tokenizer, stop_ids: Iterable[int], export: Callable[[Path], Any],
              model: str) -> VLLMSampler:
        """The engine of this run (engine_kwargs); needs vLLM and a GPU."""
        check(cfg)
        from vllm import LLM

        return cls(LLM(**engine_kwargs(cfg, model)), tokenizer, stop_ids, export)

    def sync(self, model: Any = None) -> None:
        """Export the learner's adapter and make it the policy of the next `sample` calls."""
        if self._lora is None:
            from vllm.lora.request import LoRARequest

            self._lora = LoRARequest
        self.version += 1
        name, lora_id = adapter_name(self.version)
        path = self.workdir / name
        self.export(path)
        previous, self.adapter_dir = self.adapter_dir, path
        self.adapter = self._lora(name, lora_id, str(path))
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)

    def sample(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
               temperature: float) -> list[Completion]:
        if self.adapter is None:
            raise RuntimeError("VLLMSampler.sample before sync: the engine has no policy adapter yet")
        if self._params is None:
            from vllm import SamplingParams

            self._params = SamplingParams
        params = self._params(**sampling_kwargs(n, max_new_tokens, temperature, self.stop_ids))
        outputs = self.engine.generate(token_prompts(prompts), params, use_tqdm=False, lora_request=self.adapter)
        return to_completions(outputs, n, self.stop_ids, lambda ids: self.tok.decode(ids, skip_special_tokens=True))

    def close(self) -> None:
        """Delete the exported adapters."""
        shutil.rmtree(self.workdir, ignore_errors=True)
