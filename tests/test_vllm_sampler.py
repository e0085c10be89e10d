"""rl.sampler=vllm without vLLM: the requests built for it (engine and sampling arguments, token
prompts, adapter names), the mapping of its outputs to Completions on objects shaped like vLLM's
RequestOutput / CompletionOutput / Logprob, the adapter-only sync, an RL run through a stand-in
engine that loads each exported adapter from disk as vLLM does, and the exit-2 refusals before any
model loads (vLLM not installed, FullFT, adapters on MoE experts)."""

from __future__ import annotations

import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from lora_lab import cli
from lora_lab import rl as rl_mod
from lora_lab import vllm_sampler as vs
from lora_lab.config import ConfigError, compose
from lora_lab.lora import apply_lora, export_peft, load_peft_tensors
from lora_lab.models import build_model
from lora_lab.runs import read_metrics, run_dir
from lora_lab.sampler import CachedSampler

RL_SMALL = ["task=rl", "data=tiny-math", "data.levels=[1,2]", "data.num_examples=64", "data.eval_size=8",
            "rl.prompts_per_step=4", "rl.group_size=4", "rl.max_new_tokens=10", "train.eval_every=0",
            "train.checkpoint_every=0", "logger.progress=none"]


# Shaped like vllm.sequence.Logprob / vllm.outputs.CompletionOutput / RequestOutput (the fields read).
@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    text: str = ""
    cumulative_logprob: float | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


def _out(index, tokens, lps, finish, extra=None):
    """A CompletionOutput whose logprobs[t] holds the sampled token (and, as vLLM may, another)."""
    logprobs = [{**({extra: Logprob(-9.0, rank=1)} if extra is not None else {}), t: Logprob(lp, rank=2)}
                for t, lp in zip(tokens, lps)]
    return CompletionOutput(index, tokens, logprobs, finish)


# ----------------------------------------------------------------------------- requests


def test_sampling_arguments_and_token_prompts():
    kw = vs.sampling_kwargs(8, 512, 1.0, [128009, 128001, 128009])
    assert kw == {"n": 8, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "max_tokens": 512, "logprobs": 0,
                  "stop_token_ids": [128001, 128009], "detokenize": False}
    assert vs.sampling_kwargs(1, 16, 0.0, [2])["temperature"] == 0.0  # greedy (held-out accuracy)
    with pytest.raises(ValueError):
        vs.sampling_kwargs(0, 16, 1.0, [2])
    assert vs.token_prompts([(1, 2, 3), [4]]) == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4]}]
    assert [vs.adapter_name(k) for k in (1, 2)] == [("policy-1", 1), ("policy-2", 2)]
    with pytest.raises(ValueError):
        vs.adapter_name(0)


@pytest.mark.parametrize("rank, want", [(1, 8), (8, 8), (9, 16), (128, 128), (300, 320), (512, 512)])
def test_max_lora_rank_is_the_smallest_that_vllm_accepts(rank, want):
    assert vs.max_lora_rank(rank) == want


def test_engine_arguments(tmp_path):
    cfg = compose([*RL_SMALL, "lora.rank=4", "rl.sampler=vllm", "rl.sample_batch=64", "rl.vllm_gpu_memory=0.3",
                   "rl.eval_max_new_tokens=24", "data.max_seq_len=100", "train.seed=7"])
    kw = vs.engine_kwargs(cfg, "/models/tiny")
    assert kw == {"model": "/models/tiny", "dtype": "bfloat16", "trust_remote_code": False, "seed": 7, "enable_lora": True,
                  "max_lora_rank": 8, "max_loras": 1, "max_num_seqs": 64, "gpu_memory_utilization": 0.3,
                  "max_model_len": 124, "logprobs_mode": "processed_logprobs", "generation_config": "vllm",
                  "enable_prefix_caching": True}
    hub = compose([*RL_SMALL, "rl.sampler=vllm", "model.name=meta-llama/Llama-3.1-8B", "model.revision=abc",
                   "model.dtype=float32"])
    kw = vs.engine_kwargs(hub, "meta-llama/Llama-3.1-8B")
    assert kw["revision"] == "abc" and kw["dtype"] == "float32" and kw["max_model_len"] == 320 + 10


# ----------------------------------------------------------------------------- outputs


def test_outputs_become_completions_cut_at_the_first_terminator():
    stop, eos = 50, 2
    outputs = [
        RequestOutput("0", [1, 2], [
            _out(1, [11, 12], [-0.5, -0.25], "length", extra=99),
            _out(0, [7, 8, stop], [-0.1, -0.2, -0.3], "stop", extra=7),  # the sampled token may be the top one too
        ]),
        RequestOutput("1", [3], [
            _out(0, [9, stop, 9, 9], [-1.0, -2.0, -3.0, -4.0], "length"),  # tokens past a terminator are dropped
            _out(1, [6, 31], [-0.7, -0.8], "stop"),  # vLLM stopped on an id it knows (e.g. its own eos list)
        ]),
    ]
    words = {6: "6", 7: "7", 8: "8", 9: "9", 11: "a", 12: "b", 31: "", stop: "<end>"}
    got = vs.to_completions(outputs, 2, [eos, stop], lambda ids: "".join(words[i] for i in ids), offset=10)
    assert [c.prompt_index for c in got] == [10, 10, 11, 11]
    assert [c.tokens for c in got] == [[7, 8, stop], [11, 12], [9, stop], [6, 31]]
    assert [c.logprobs for c in got] == [[-0.1, -0.2, -0.3], [-0.5, -0.25], [-1.0, -2.0], [-0.7, -0.8]]
    assert [c.text for c in got] == ["78", "ab", "9", "6"]
    assert [c.finished for c in got] == [True, False, True, True]


def test_malformed_outputs_are_refused():
    one = RequestOutput("0", [1], [_out(0, [5], [-0.1], "length")])
    with pytest.raises(RuntimeError, match="not n=2"):
        vs.to_completions([one], 2, [2], str)
    with pytest.raises(RuntimeError, match="logprobs=0"):
        vs.to_completions([RequestOutput("0", [1], [CompletionOutput(0, [5], None, "length")])], 1, [2], str)
    short = CompletionOutput(0, [5, 6], [{5: Logprob(-0.1)}], "length")
    with pytest.raises(RuntimeError, match="1 log-probs for 2 tokens"):
        vs.to_completions([RequestOutput("0", [1], [short])], 1, [2], str)


# ----------------------------------------------------------------------------- the sampler


@dataclass
class LoRARequest:  # vllm.lora.request.LoRARequest's positional fields
    lora_name: str
    lora_int_id: int
    lora_path: str


class SamplingParams(dict):
    def __init__(self, **kw):
        super().__init__(kw)
        self.__dict__.update(kw)


@dataclass
class RecordingEngine:
    """`generate` as vllm.LLM's, answering each prompt with the same scripted completions."""

    calls: list = field(default_factory=list)

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        self.calls.append((prompts, sampling_params, lora_request))
        assert Path(lora_request.lora_path, "adapter_model.safetensors").is_file()  # there when vLLM reads it
        n = sampling_params.n
        return [RequestOutput(str(i), p["prompt_token_ids"], [_out(k, [5, 2, 5], [-0.5, -0.5, -0.5], "stop")
                                                                for k in range(n)]) for i, p in enumerate(prompts)]


def test_the_sampler_syncs_the_adapter_alone_with_a_fresh_id_each_time(tmp_path):
    cfg = compose(["lora.rank=2"])
    model, tok = build_model(cfg.model)
    sites = apply_lora(model, cfg.lora)
    engine = RecordingEngine()
    s = vs.VLLMSampler(engine, tok, [2], lambda path: export_peft(sites, cfg.lora, path, "base"),
                       sampling_params=SamplingParams, lora_request=LoRARequest, workdir=tmp_path / "adapters")
    with pytest.raises(RuntimeError, match="before sync"):
        s.sample([[1, 3]], 2, 4, 1.0)
    s.sync(model)
    first = s.adapter
    assert (first.lora_name, first.lora_int_id) == ("policy-1", 1)
    config = json.loads(Path(first.lora_path, "adapter_config.json").read_text())
    assert config["r"] == 2 and config["peft_type"] == "LORA"  # peft's format, which vLLM loads
    with torch.no_grad():
        sites[0].module.lora_B[0].add_(1.0)  # the learner moves on
    s.sync(model)
    assert (s.adapter.lora_name, s.adapter.lora_int_id) == ("policy-2", 2) and not Path(first.lora_path).exists()
    copy = apply_lora(build_model(cfg.model)[0], cfg.lora)
    load_peft_tensors(copy, s.adapter.lora_path)
    assert torch.equal(copy[0].module.lora_B[0], sites[0].module.lora_B[0])  # the new weights went out
    out = s.sample([[1, 3], [4]], 2, 4, 0.7)
    prompts, params, lora = engine.calls[-1]
    assert prompts == [{"prompt_token_ids": [1, 3]}, {"prompt_token_ids": [4]}] and lora is s.adapter
    assert params == vs.sampling_kwargs(2, 4, 0.7, [2])
    assert [(c.prompt_index, c.tokens, c.finished) for c in out] == [(0, [5, 2], True)] * 2 + [(1, [5, 2], True)] * 2
    s.close()
    assert not (tmp_path / "adapters").exists()


class AdapterEngine:
    """A stand-in for vllm.LLM on the CPU: the base model it was built from, plus whatever adapter
    each request names, read from its peft files (as vLLM loads one), sampled by lora-lab's cached
    loop and returned in vLLM's output shapes."""

    def __init__(self, cfg, **engine_kwargs):
        self.kwargs = engine_kwargs
        self.model, self.tok = build_model(cfg.model)
        self.sites = apply_lora(self.model, cfg.lora)
        self.loaded: list[int] = []

    def generate(self, prompts, sampling_params, *, use_tqdm=True, lora_request=None):
        if not self.loaded or self.loaded[-1] != lora_request.lora_int_id:
            load_peft_tensors(self.sites, lora_request.lora_path)
            self.loaded.append(lora_request.lora_int_id)
        p = sampling_params
        done = CachedSampler(self.model, self.tok, stop_ids=p.stop_token_ids).sample(
            [q["prompt_token_ids"] for q in prompts], p.n, p.max_tokens, p.temperature)
        return [RequestOutput(str(i), q["prompt_token_ids"], [
            CompletionOutput(k, c.tokens, [{t: Logprob(lp)} for t, lp in zip(c.tokens, c.logprobs)],
                             "stop" if c.finished else "length")
            for k, c in enumerate(done[i * p.n:(i + 1) * p.n])]) for i, q in enumerate(prompts)]


@pytest.fixture
def fake_vllm(monkeypatch):
    """`import vllm` gives the stand-ins: LLM (AdapterEngine on the run's config), SamplingParams and
    vllm.lora.request.LoRARequest."""
    engines: list[AdapterEngine] = []

    def install(cfg):
        def llm(**kw):
            engines.append(AdapterEngine(cfg, **kw))
            return engines[-1]

        root, lora, request = (types.ModuleType(n) for n in ("vllm", "vllm.lora", "vllm.lora.request"))
        root.LLM, root.SamplingParams, request.LoRARequest = llm, SamplingParams, LoRARequest
        for name, module in (("vllm", root), ("vllm.lora", lora), ("vllm.lora.request", request)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(vs, "vllm_available", lambda: True)
        return engines

    return install


def test_an_rl_run_on_the_vllm_sampler_stays_on_policy(tmp_path, fake_vllm, monkeypatch):
    """Every step's samples come from the adapter the learner had at that step (a new one each step,
    read back from its exported files), so the learner's ratio is 1 and its KL 0, as with the tiny
    samplers, while the policy moves."""
    monkeypatch.setattr(rl_mod, "score", lambda task, text, ref: float("7" in text))
    cfg = compose([*RL_SMALL, f"run.root={tmp_path}", "rl.sampler=vllm", "lora.rank=4", "optim.lr=1e-2",
                   "train.max_steps=3", "train.eval_every=2"])
    engines = fake_vllm(cfg)
    adapters = tmp_path / "adapters"

    def mkdtemp(prefix):
        adapters.mkdir()
        return str(adapters)

    monkeypatch.setattr(vs.tempfile, "mkdtemp", mkdtemp)
    from lora_lab.launch import train

    summary = train(cfg)
    assert summary["status"] == "completed"
    (engine,) = engines
    assert engine.kwargs["enable_lora"] and engine.kwargs["max_num_seqs"] == 256
    assert engine.kwargs["model"] == rl_mod.base_reference(cfg.model)
    # Syncs: step 0's evaluation, steps 1-3, the final evaluation; each a new adapter id.
    assert engine.loaded == [1, 2, 3, 4, 5]
    rows = [r for r in read_metrics(run_dir(cfg) / "metrics.jsonl") if "reward" in r]
    ran = [r for r in rows if r["kl"] is not None]
    assert ran and all(abs(r["ratio_mean"] - 1) < 1e-4 and r["kl"] < 1e-6 for r in ran)
    assert not adapters.exists()  # the exported adapters are deleted with the sampler


# ----------------------------------------------------------------------------- refusals


def test_without_vllm_installed_a_run_stops_with_exit_2_before_any_model_loads(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(vs, "vllm_available", lambda: False)

    def no_model(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("lora_lab.learner.build_model", no_model)
    args = [*RL_SMALL, f"run.root={tmp_path}", "rl.sampler=vllm", "train.max_steps=1"]
    code = cli.main(["train", *args])
    err = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("lora-lab: config error: rl.sampler='vllm': vLLM is not installed")
    assert "pip install 'lora-lab[vllm]'" in err[0]
    assert not run_dir(compose(args)).exists()


def test_fullft_and_moe_expert_adapters_are_refused(monkeypatch):
    with pytest.raises(ConfigError, match=r"^rl\.sampler='vllm': syncs a LoRA adapter"):
        compose([*RL_SMALL, "method=full", "rl.sampler=vllm"])
    monkeypatch.setattr(vs, "vllm_available", lambda: True)
    with pytest.raises(ConfigError, match=r"^rl\.sampler='vllm': tiny-moe is a mixture of experts"):
        vs.check(compose([*RL_SMALL, "model=tiny-moe", "rl.sampler=vllm", "lora.rank=2"]))
    vs.check(compose([*RL_SMALL, "model=tiny-moe", "rl.sampler=vllm", "lora.layers=attn"]))
    vs.check(compose([*RL_SMALL, "rl.sampler=vllm"]))
    vs.check(compose([*RL_SMALL, "method=full"]))  # other samplers need nothing
