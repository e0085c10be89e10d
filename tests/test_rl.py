"""RL: the objective against REINFORCE and hand calculations, group centring, the sampler's
log-probs, config identity, and short runs (learning, run directory, resume, divergence)."""

import json
import math
import random
import signal
import subprocess
import time

import pytest
import torch
import torch.nn.functional as F

from conftest import LORA_LAB
from lora_lab import rl as rl_mod
from lora_lab.config import ConfigError, compose
from lora_lab.runs import config_hash, run_dir, run_id
from lora_lab.runs import identity as _identity
from lora_lab.lora import apply_lora
from lora_lab.models import build_model
from lora_lab.rl import collate_rl, completion_logprobs, group_advantages, policy_loss
from lora_lab.runs import RunDir, load_state, read_metrics
from lora_lab.sampler import CachedSampler, HFSampler, Sampler, completion, generation_eos, stop_token_ids
from lora_lab.launch import train
from lora_lab.data import _messages, run_rows
from lora_lab.learner import summary_from_final
from lora_lab.tiny.common import fixed_eval_split

# A few seconds per run on a 2-core CPU.
RL_SMALL = ["task=rl", "data=tiny-math", "data.levels=[1,2]", "data.num_examples=64", "data.eval_size=16",
            "rl.prompts_per_step=4", "rl.group_size=4", "rl.max_new_tokens=12", "train.eval_every=0",
            "train.checkpoint_every=0", "logger.progress=none"]


@pytest.fixture
def rl_small(tmp_path):
    def make(*overrides: str):
        return compose([*RL_SMALL, f"run.root={tmp_path / 'runs'}", *overrides])

    return make


# ----------------------------------------------------------------------------- objective


def test_group_advantages_centre_each_group_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    adv = group_advantages(rewards)
    assert torch.equal(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4, [-0.25, -0.25, -0.25, 0.75]]))
    # std normalisation: group 3 has mean 1/4 and population std sqrt(3)/4.
    std = group_advantages(rewards, normalize_std=True)
    s3 = 3 ** 0.5 / 4
    assert torch.allclose(std, torch.tensor([[1.0, -1, -1, 1], [0.0] * 4, [-0.25 / s3] * 3 + [0.75 / s3]]), atol=1e-5)


def test_objective_on_a_categorical_policy_matches_the_hand_gradient():
    """One-token episodes from softmax(theta) over 3 actions, sampled by another policy q:
    grad of -(1/N) sum_i rho_i A_i is -(1/N) sum_i rho_i A_i (e_{a_i} - p)."""
    theta = torch.tensor([0.2, -0.5, 1.0], requires_grad=True)
    q = torch.tensor([0.5, 0.3, 0.2])
    actions, adv = torch.tensor([0, 2, 1, 2]), torch.tensor([1.0, -0.5, 0.25, 2.0])
    logp = torch.log_softmax(theta, 0)[actions]
    loss, rho = policy_loss(logp, torch.log(q[actions]), adv, num_sequences=4)
    loss.backward()
    p = torch.softmax(theta.detach(), 0)
    want = torch.zeros(3)
    for a, A in zip(actions.tolist(), adv.tolist()):
        want -= (p[a] / q[a]) * A * (torch.eye(3)[a] - p) / 4
    assert torch.allclose(theta.grad, want, atol=1e-6)
    assert torch.allclose(rho, p[actions] / q[actions])
    assert loss.item() == pytest.approx(-(rho * adv).sum().item() / 4)


def test_clipping_stops_the_gradient_only_where_ppo_does():
    logp = torch.log(torch.tensor([0.9, 0.9, 0.1, 0.1])).requires_grad_(True)
    sampler = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))  # rho = 1.8, 1.8, 0.2, 0.2
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss, _ = policy_loss(logp, sampler, adv, num_sequences=1, clip_eps=0.2)
    loss.backward()
    # rho A with rho=1.8, A>0: clipped (no gradient); A<0: min keeps the unclipped -1.8 (gradient).
    # rho=0.2, A>0: min keeps 0.2 (gradient); A<0: clipped at 0.8 (no gradient).
    assert torch.allclose(logp.grad, torch.tensor([0.0, 1.8, -0.2, 0.0]), atol=1e-6)
    assert loss.item() == pytest.approx(-(1.2 - 1.8 + 0.2 - 0.8))
    # Unclipped, every token has gradient -rho A / N.
    logp.grad = None
    policy_loss(logp, sampler, adv, num_sequences=1)[0].backward()
    assert torch.allclose(logp.grad, torch.tensor([-1.8, 1.8, -0.2, 0.2]), atol=1e-6)


@pytest.fixture(scope="module")
def model_tok():
    torch.manual_seed(0)
    return build_model(compose([]).model)


def _sampled_batch(model, tok, temperature, n=3, sampler=CachedSampler):
    torch.manual_seed(1)
    questions = ["What is 3 + 4?", "Compute $12 - 5$.", "Kelu has 4 shells and finds 3 more. How many shells does Kelu have now?"]
    prompts = [rl_mod.Prompt(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                     tokenize=True, return_dict=True)["input_ids"], "7") for q in questions]
    completions = sampler(model, tok).sample([p.ids for p in prompts], n=n, max_new_tokens=10, temperature=temperature)
    return prompts, completions


@pytest.mark.parametrize("sampler", [CachedSampler, HFSampler])
def test_sampler_log_probs_are_the_learners_up_to_float_error(model_tok, sampler):
    model, tok = model_tok
    for temperature in (1.0, 0.6):
        prompts, completions = _sampled_batch(model, tok, temperature, sampler=sampler)
        assert len(completions) == 9 and [c.prompt_index for c in completions] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert isinstance(sampler(model, tok), Sampler)
        for c in completions:
            assert len(c.tokens) == len(c.logprobs) and 1 <= len(c.tokens) <= 10
            assert c.finished == (c.tokens[-1] == tok.eos_token_id) and tok.eos_token_id not in c.tokens[:-1]
            # Independent recomputation: one full forward without a cache, softmax(logits / T).
            ids = torch.tensor([prompts[c.prompt_index].ids + c.tokens])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].float() / temperature
            want = torch.log_softmax(logits, -1)[torch.arange(ids.shape[1] - 1), ids[0, 1:]][-len(c.tokens):]
            assert torch.allclose(torch.tensor(c.logprobs), want, atol=1e-4), (c.logprobs, want)


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-moe"])
def test_the_cached_loop_decodes_greedily_what_generate_does(model_name):
    """Same tokens, same log-probs, for prompts of different lengths (left padding) and several
    samples per prompt (the shared prefill), on a LoRA model whose adapters are not zero."""
    torch.manual_seed(0)
    cfg = compose([f"model={model_name}", "lora.rank=4"])
    model, tok = build_model(cfg.model)
    apply_lora(model, cfg.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
    rows = ["What is 3 + 4?", "Reverse the word stone.", "Mira has 12 apples and gives away 5. How many apples are left?"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for q in rows]
    assert len({len(p) for p in prompts}) == 3
    ours = CachedSampler(model, tok).sample(prompts, n=2, max_new_tokens=24, temperature=0.0)
    ref = HFSampler(model, tok).sample(prompts, n=2, max_new_tokens=24, temperature=0.0)
    assert [c.tokens for c in ours] == [c.tokens for c in ref]
    assert [c.finished for c in ours] == [c.finished for c in ref]
    assert {len(c.tokens) for c in ours} != {24}  # some stop early, so rows leave the batch mid-loop
    for a, b in zip(ours, ref):
        assert a.prompt_index == b.prompt_index and a.text == b.text
        assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)


def test_the_cached_loop_draws_from_the_distribution_it_reports(model_tok):
    """4000 one-token samples of one prompt at temperature 0.8: each frequent token's share is within
    4.5 binomial standard errors of exp(its reported log-prob)."""
    model, tok = model_tok
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 3 + 4?"}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    torch.manual_seed(3)
    n = 4000
    out = CachedSampler(model, tok, max_batch=n).sample([prompt], n=n, max_new_tokens=1, temperature=0.8)
    counts: dict[int, int] = {}
    prob: dict[int, float] = {}
    for c in out:
        counts[c.tokens[0]] = counts.get(c.tokens[0], 0) + 1
        prob[c.tokens[0]] = math.exp(c.logprobs[0])
    assert len(counts) > 2  # a spread to test
    assert sum(prob.values()) <= 1 + 1e-4
    for t, k in counts.items():
        p = prob[t]
        if p > 0.02:
            assert abs(k / n - p) < 4.5 * math.sqrt(p * (1 - p) / n), (tok.decode([t]), k / n, p)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_objective_gradient_equals_reinforce_when_sampler_and_learner_coincide(model_tok, temperature):
    """grad of the importance-sampled loss with the sampler's log-probs = the learner's (rho = 1)
    equals -(1/N) sum_i A_i sum_t grad log p(y_it), computed here with cross-entropy per sequence."""
    model, tok = model_tok
    prompts, completions = _sampled_batch(model, tok, temperature)
    adv = [0.5, -0.25, 1.0, 0.0, -1.0, 0.75, 0.2, -0.4, 0.3]
    params = [p for p in model.parameters() if p.requires_grad]

    batch = collate_rl(prompts, completions, adv, tok.pad_token_id)
    with torch.no_grad():
        on_policy, _ = completion_logprobs(model, batch, temperature)
    model.zero_grad()
    logp, _ = completion_logprobs(model, batch, temperature)
    loss, rho = policy_loss(logp, on_policy, batch["advantages"], num_sequences=len(completions))
    loss.backward()
    ours = [p.grad.clone() for p in params]
    assert torch.allclose(rho, torch.ones_like(rho))

    model.zero_grad()
    reinforce = 0.0
    for c, a in zip(completions, adv):
        ids = torch.tensor([prompts[c.prompt_index].ids + c.tokens])
        logits = model(input_ids=ids).logits[0, -len(c.tokens) - 1:-1] / temperature
        nll = F.cross_entropy(logits, torch.tensor(c.tokens), reduction="sum")
        reinforce = reinforce + a * nll / len(completions)
    reinforce.backward()
    for ours_g, p in zip(ours, params):
        assert torch.allclose(ours_g, p.grad, atol=1e-6, rtol=1e-4)
    assert sum(g.abs().sum() for g in ours) > 0
    model.zero_grad()


# ----------------------------------------------------------------------------- terminators


def _turn_tokenizer(template: str):
    """The tiny tokenizer with <|im_end|> and <|eot_id|> added as special tokens (ids 2048, 2049;
    its eos <|end|> stays 2) and a shipped chat template (chatml or llama3) installed."""
    from lora_lab.data import CHAT_TEMPLATE_DIR
    from lora_lab.models import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    tok.add_tokens(["<|im_end|>", "<|eot_id|>"], special_tokens=True)
    tok.chat_template = (CHAT_TEMPLATE_DIR / f"{template}.jinja").read_text()
    return tok


def test_the_terminators_are_eos_the_generation_configs_and_the_templates_end_of_turn(tmp_path):
    tok = _turn_tokenizer("chatml")
    im_end, eot = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|eot_id|>")
    assert stop_token_ids(tok) == sorted([tok.eos_token_id, im_end])  # the template writes <|im_end|> only
    assert stop_token_ids(_turn_tokenizer("llama3")) == sorted([tok.eos_token_id, eot])
    assert stop_token_ids(tok, [7, im_end]) == sorted([7, tok.eos_token_id, im_end])
    # A template's end-of-turn token that the tokenizer splits into pieces cannot be stopped on by id.
    from lora_lab.models import load_tokenizer

    plain = load_tokenizer("tiny-llama")
    plain.chat_template = tok.chat_template
    assert stop_token_ids(plain) == [plain.eos_token_id]
    # generation_config.json's eos_token_id, an id or a list, from a local model directory.
    model = compose([]).model
    assert generation_eos(model) == [tok.eos_token_id]  # the shipped tiny-llama's
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128008, 128009]}))
    assert generation_eos(type(model)(name=str(tmp_path))) == [128001, 128008, 128009]
    (tmp_path / "generation_config.json").unlink()
    assert generation_eos(type(model)(name=str(tmp_path))) == []


def test_a_completion_is_cut_after_its_first_terminator_and_the_text_stops_before_it():
    words = {1: "7", 2: " 7", 9: "<stop>", 3: " 8"}
    c = completion(4, [1, 2, 9, 3, 9], [-0.1, -0.2, -0.3, -0.4, -0.5], [9], lambda ids: "".join(words[i] for i in ids))
    assert (c.prompt_index, c.tokens, c.logprobs, c.text, c.finished) == (4, [1, 2, 9], [-0.1, -0.2, -0.3], "7 7", True)
    c = completion(0, [1, 3], [-0.1, -0.4], [9], lambda ids: "".join(words[i] for i in ids))
    assert (c.tokens, c.text, c.finished) == ([1, 3], "7 8", False)


def _scripted(model, choose, boost: float = 20.0):
    """Make the model's next-token logits 0 everywhere but `boost` at choose(prompt_length, t) for the
    row generating its t-th token, whatever sampler drives it (both extend the attention mask by one
    column per step, and keep each row's prompt in it)."""
    forward, state = model.forward, {}

    def scripted(*args, input_ids=None, attention_mask=None, **kwargs):
        out = forward(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if input_ids.shape[1] > 1:  # the prefill
            state["width"] = attention_mask.shape[1]
        t = attention_mask.shape[1] - state["width"]
        logits = torch.zeros_like(out.logits[:, -1])
        for row, plen in enumerate((attention_mask.sum(-1) - t).tolist()):
            logits[row, choose(plen, t)] = boost
        out.logits = torch.cat([out.logits[:, :-1], logits[:, None]], dim=1)
        return out

    model.forward = scripted
    return lambda: setattr(model, "forward", forward)


@pytest.mark.parametrize("sampler", [CachedSampler, HFSampler])
@pytest.mark.parametrize("template, terminator", [("chatml", "<|im_end|>"), ("llama3", "<|eot_id|>")])
def test_sampling_stops_at_the_chat_turns_terminator(sampler, template, terminator):
    """A policy that writes "7 7 7", then the turn's terminator (not the tokenizer's eos), then " 8"s
    for one prompt, and " 8"s to the length limit for the other: the first stops at the terminator
    while the other goes on, tokens, log-probs and the learner's mask end there, and the reward
    reads 7 (the text after the terminator would have made it 8)."""
    from lora_lab.rewards import score

    tok = _turn_tokenizer(template)
    torch.manual_seed(0)
    model, _ = build_model(compose([]).model)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    stop = tok.convert_tokens_to_ids(terminator)
    seven, space7, space8 = tok.encode("7")[0], tok.encode(" 7")[-1], tok.encode(" 8")[-1]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=True)["input_ids"] for q in ("What is 3 + 4?", "What is 12 - 4 + 3 - 3?")]
    short = len(prompts[0])
    assert short < len(prompts[1]) and stop != tok.eos_token_id

    def choose(plen, t):
        if plen != short:
            return space8
        return [seven, space7, space7, stop][t] if t < 4 else space8

    restore = _scripted(model, choose)
    try:
        out = sampler(model, tok).sample(prompts, n=2, max_new_tokens=8, temperature=1.0)
    finally:
        restore()
    assert [c.prompt_index for c in out] == [0, 0, 1, 1]
    lp = -math.log1p((len(tok) - 1) * math.exp(-20.0))  # the boosted token's log-prob under softmax
    for c in out[:2]:
        assert c.tokens == [seven, space7, space7, stop] and c.finished and c.text == "7 7 7"
        assert score("tiny-math", c.text, "7") == 1.0
    for c in out[2:]:
        assert c.tokens == [space8] * 8 and not c.finished and score("tiny-math", c.text, "7") == 0.0
    for c in out:
        assert c.logprobs == pytest.approx([lp] * len(c.tokens), abs=1e-5)
    # The learner's batch: the completion-target positions are exactly the kept tokens, the last of
    # the stopped rows being the terminator, and one sampler log-prob for each.
    batch = collate_rl([rl_mod.Prompt(p, "7") for p in prompts], out, [1.0, 1.0, -1.0, -1.0], tok.pad_token_id)
    assert batch["target_mask"].sum(1).tolist() == [4, 4, 8, 8]
    targets = batch["input_ids"][:, 1:][batch["target_mask"]]
    assert targets.tolist() == [t for c in out for t in c.tokens] and len(batch["sampler_logp"]) == len(targets)
    logp, _ = completion_logprobs(model, batch, 1.0)
    assert logp.shape == batch["sampler_logp"].shape


def test_an_rl_run_samples_with_the_terminators_of_its_model_and_template(rl_small, monkeypatch):
    """build_sampler hands the sampler the tokenizer's, the generation config's and the template's
    terminators, and rl.sample_batch as its chunk size."""
    seen = {}

    class Spy(CachedSampler):
        def __init__(self, model, tok, max_batch=256, stop_ids=None):
            super().__init__(model, tok, max_batch=max_batch, stop_ids=stop_ids)
            seen.update(max_batch=max_batch, stop_ids=stop_ids, chunks=[])

        def _generate(self, prompts, offset, n, max_new_tokens, temperature):
            seen["chunks"].append(len(prompts) * n)
            return super()._generate(prompts, offset, n, max_new_tokens, temperature)

    monkeypatch.setitem(rl_mod.SAMPLERS, "cache", Spy)
    monkeypatch.setattr(rl_mod, "generation_eos", lambda model_cfg: [5])
    s = train(rl_small("train.max_steps=1", "rl.sample_batch=8"))
    assert s["status"] == "completed" and seen["max_batch"] == 8 and seen["stop_ids"] == [2, 5]
    assert max(seen["chunks"]) == 8  # a step's 4 x 4 completions and the 16 held-out problems, 8 at a time


# ----------------------------------------------------------------------------- config


def test_rl_keys_are_part_of_an_rl_runs_identity_only():
    sft = compose([])
    assert run_id(compose(["rl.group_size=4", "rl.temperature=0.5"])) == run_id(sft)
    # An SFT run's identity has no rl section, so its hash is what it was before task=rl existed.
    assert "rl" not in _identity(sft) and "rl" in _identity(compose(["task=rl", "data=tiny-math"]))
    assert config_hash(compose(["rl.clip_eps=0.2", "rl.instruction=hi"])) == config_hash(sft)
    a = compose(["task=rl", "data=tiny-math"])
    assert "_rl8x8_" in run_id(a) and "_bs" not in run_id(a)
    for other in (["rl.group_size=4"], ["rl.updates_per_batch=2"], ["rl.normalize_std=true"], ["rl.clip_eps=0.2"],
                  ["rl.sampler=generate"], ["rl.sample_batch=64"], ["rl.sampler=vllm"]):
        assert run_id(compose(["task=rl", "data=tiny-math", *other])) != run_id(a), other
    from lora_lab.config import RLConfig
    from lora_lab.sampler import DEFAULT_SAMPLE_BATCH

    assert RLConfig().sample_batch == DEFAULT_SAMPLE_BATCH
    # Keys added later, at the value that computes what runs made before them computed: same id.
    assert run_id(compose(["task=rl", "data=tiny-math", "rl.sample_batch=256", "rl.vllm_gpu_memory=0.4"])) == run_id(a)
    # Where the sampler sits on the GPU is not what the run computes: never part of the id.
    assert run_id(compose(["task=rl", "data=tiny-math", "rl.vllm_gpu_memory=0.3"])) == run_id(a)
    # No validation split (rl.val_size=0) computes what runs made before the key did: same id.
    assert "val_size" not in _identity(a)["rl"] and run_id(compose(["task=rl", "data=tiny-math", "rl.val_size=0"])) == run_id(a)
    assert run_id(compose(["task=rl", "data=tiny-math", "rl.val_size=64"])) != run_id(a)
    assert run_id(compose(["rl.val_size=64"])) == run_id(sft)  # rl.* stays out of an SFT run's identity


@pytest.mark.parametrize("overrides, key", [
    (["task=rl"], "data.name"),  # tiny-tulu has no verifiable reward
    (["task=rl", "data=tiny-math", "optim.batch_size=8"], "optim.batch_size"),
    (["rl.group_size=1"], "rl.group_size"),
    (["rl.updates_per_batch=3"], "rl.updates_per_batch"),
    (["rl.clip_eps=1.5"], "rl.clip_eps"),
    (["rl.temperature=0"], "rl.temperature"),
    (["rl.max_new_tokens=0"], "rl.max_new_tokens"),
    (["task=ppo"], "task"),
    (["rl.sampler=sglang"], "rl.sampler"),
    (["rl.sample_batch=0"], "rl.sample_batch"),
    (["rl.group_size=16", "rl.sample_batch=8"], "rl.sample_batch"),
    (["rl.vllm_gpu_memory=1.5"], "rl.vllm_gpu_memory"),
    (["task=rl", "data=tiny-math", "method=full", "rl.sampler=vllm"], "rl.sampler"),
    (["rl.sampler=vllm", "rl.temperature=2.5"], "rl.temperature"),
    (["rl.val_size=-1"], "rl.val_size"),
    (["task=rl", "data=tiny-math", "rl.val_size=1000000"], "rl.val_size"),
])
def test_bad_rl_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=rf"^{key}="):
        compose(overrides)


# ----------------------------------------------------------------------------- runs


def test_a_short_run_raises_an_easy_reward(rl_small, monkeypatch):
    """Reward 1 for a completion that contains the digit 7: the base model writes one in ~20% of its
    answers; a few RL steps of rank-4 LoRA should make it much more common."""
    monkeypatch.setattr(rl_mod, "score", lambda task, text, ref: float("7" in text))
    cfg = rl_small("lora.rank=4", "optim.lr=1e-2", "train.max_steps=16", "rl.prompts_per_step=8", "rl.max_new_tokens=8")
    s = train(cfg)
    rows = [r for r in read_metrics(run_dir(cfg) / "metrics.jsonl") if "reward" in r]
    first, last = sum(r["reward"] for r in rows[:4]) / 4, sum(r["reward"] for r in rows[-4:]) / 4
    assert s["status"] == "completed" and last > first + 0.3, (first, last)


def test_rl_run_writes_the_run_directory_contract(rl_small):
    cfg = rl_small("train.max_steps=3", "train.eval_every=2", "optim.lr=1e-3")
    s = train(cfg)
    rd = RunDir(run_dir(cfg))
    assert s["status"] == "completed" and s["task"] == "rl" and s["steps"] == 3
    for key in ("final_reward", "final_eval_accuracy", "base_eval_accuracy", "trainable_params", "wall_s"):
        assert s[key] is not None, key
    assert (rd.path / "adapter" / "adapter_model.safetensors").exists() and (rd.path / "meta.json").exists()
    rows = read_metrics(rd.metrics_path)
    steps = [r for r in rows if "reward" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert [(r["step"], r["eval_accuracy"]) for r in rows if "eval_accuracy" in r][0] == (0, s["base_eval_accuracy"])
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 2, 3]
    for r in rows:  # which held-out problems were solved, one character each, agreeing with the accuracy
        if "eval_accuracy" in r:
            assert len(r["eval_solved"]) == 16 and set(r["eval_solved"]) <= {"0", "1"}
            assert r["eval_solved"].count("1") / 16 == r["eval_accuracy"]
    # No validation split by default (rl.val_size=0): nothing of one is logged.
    assert not any(k.startswith("val_") for r in rows for k in r)
    assert "final_val_accuracy" not in s and "base_val_accuracy" not in s
    for key in ("reward", "accuracy", "completion_len", "lr", "wall_s", "grad_norm", "examples", "tokens"):
        assert all(isinstance(r[key], (int, float)) for r in steps), key
    # Learner statistics: over completions with a nonzero advantage, null in a step without any.
    for r in steps:
        ran = r["zero_adv_groups"] < 1
        assert all(isinstance(r[k], float) == ran and (r[k] is None) != ran for k in ("entropy", "ratio_mean", "ratio_std", "kl"))
        # On-policy with one update per batch: the ratio is 1 and the KL 0 up to float error.
        assert not ran or (abs(r["ratio_mean"] - 1) < 1e-4 and r["kl"] < 1e-6 and r["entropy"] > 0)
    assert [r["examples"] for r in steps] == [4, 8, 12] and steps[-1]["accuracy"] == steps[-1]["reward"]
    assert s["final_reward"] == steps[-1]["reward"]  # the last tenth of 3 steps is the last step
    # Launched again: skipped.
    assert train(cfg)["wall_s"] == s["wall_s"]


def test_several_updates_per_batch_move_the_ratio_off_one(rl_small, monkeypatch):
    monkeypatch.setattr(rl_mod, "score", lambda task, text, ref: float("7" in text))
    cfg = rl_small("train.max_steps=3", "rl.prompts_per_step=8", "rl.updates_per_batch=2", "optim.lr=1e-2",
                   "rl.clip_eps=0.2")
    s = train(cfg)
    rows = [r for r in read_metrics(run_dir(cfg) / "metrics.jsonl") if "reward" in r]
    assert s["status"] == "completed"
    # The second half of each batch was sampled before the first update: rho != 1 there.
    assert any((r["ratio_std"] or 0) > 1e-3 for r in rows)


@pytest.mark.parametrize("val_size", [0, 4])
def test_a_crash_is_recorded_and_the_relaunch_resumes_exactly(rl_small, monkeypatch, val_size):
    args = ["lora.rank=2", "optim.lr=3e-3", "train.max_steps=6", "train.eval_every=2", "train.checkpoint_every=2",
            "train.seed=3", f"rl.val_size={val_size}"]
    reference = train(rl_small(*args, "run.experiment=reference"))
    cfg = rl_small(*args)
    calls = {"n": 0}
    real = rl_mod.eval_accuracy
    per_eval = 2 if val_size else 1  # the test problems, then the validation ones

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2 * per_eval + 1:  # the eval at step 4 (after step 0 and step 2); the checkpoint of step 2 is on disk
            raise RuntimeError("node lost")
        return real(*a, **k)

    monkeypatch.setattr(rl_mod, "eval_accuracy", flaky)
    with pytest.raises(RuntimeError, match="node lost"):
        train(cfg)
    s = RunDir(run_dir(cfg)).summary()
    assert s["status"] == "failed" and "node lost" in s["error"]
    monkeypatch.setattr(rl_mod, "eval_accuracy", real)
    s = train(cfg)
    assert s["status"] == "completed"
    assert json.loads((run_dir(cfg) / "meta.json").read_text())["resumed_from_step"] == 2
    rows = read_metrics(run_dir(cfg) / "metrics.jsonl")
    ref_rows = read_metrics(run_dir(rl_small(*args, "run.experiment=reference")) / "metrics.jsonl")
    assert [r["step"] for r in rows if "reward" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval_accuracy" in r] == [0, 2, 4, 6]

    def strip(rs):
        return [{k: v for k, v in r.items() if not k.endswith("_s")} for r in rs]

    assert strip(rows) == strip(ref_rows)  # same samples, rewards, ratios and losses, bitwise
    keys = ("final_reward", "final_eval_accuracy", "base_eval_accuracy")
    for key in keys + (("final_val_accuracy", "base_val_accuracy") if val_size else ()):
        assert s[key] == reference[key] and s[key] is not None, key
    assert [r["step"] for r in rows if "val_accuracy" in r] == ([0, 2, 4, 6] if val_size else [])


def test_a_non_finite_loss_is_a_diverged_result(rl_small, monkeypatch):
    real = rl_mod.policy_loss

    def poisoned(*a, **k):
        loss, rho = real(*a, **k)
        return loss * float("nan"), rho

    monkeypatch.setattr(rl_mod, "policy_loss", poisoned)
    monkeypatch.setattr(rl_mod, "score", lambda task, text, ref: float(len(text) % 2))  # groups with a signal
    cfg = rl_small("train.max_steps=3")
    s = train(cfg)
    assert s["status"] == "diverged" and s["diverged_at_step"] == 1 and s["final_eval_accuracy"] is None
    assert read_metrics(run_dir(cfg) / "metrics.jsonl")[-1]["diverged"] is True
    assert not (run_dir(cfg) / "adapter").exists()


@pytest.mark.slow
def test_sigkill_midway_then_relaunch_equals_an_uninterrupted_run(tmp_path):
    base = [*RL_SMALL, "method=full", "optim.lr=1e-4", "train.max_steps=14", "train.checkpoint_every=4",
            "train.eval_every=4"]
    killed_args = [*base, f"run.root={tmp_path / 'killed'}"]
    rd = RunDir(run_dir(compose(killed_args)))
    p = subprocess.Popen([LORA_LAB, "train", *killed_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if any(r.get("step", 0) >= 6 and "reward" in r for r in read_metrics(rd.metrics_path)):
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert p.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert rd.summary() is None and rd.checkpoint_path.exists()
    out = subprocess.run([LORA_LAB, "train", *killed_args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "resuming from step 4" in out.stderr, out.stderr
    clean_args = [*base, f"run.root={tmp_path / 'clean'}"]
    assert subprocess.run([LORA_LAB, "train", *clean_args], capture_output=True, timeout=600).returncode == 0
    clean = RunDir(run_dir(compose(clean_args)))
    killed_rows, clean_rows = read_metrics(rd.metrics_path), read_metrics(clean.metrics_path)
    assert [r["step"] for r in killed_rows if "reward" in r] == list(range(1, 15))
    assert [r.get("reward") for r in killed_rows] == [r.get("reward") for r in clean_rows]
    assert rd.summary()["final_eval_accuracy"] == clean.summary()["final_eval_accuracy"]


def test_prompts_longer_than_max_seq_len_are_skipped_and_counted(rl_small):
    cfg = rl_small("train.max_steps=3", "data.max_seq_len=24", "rl.prompts_per_step=8")
    s = train(cfg)
    rows = [r for r in read_metrics(run_dir(cfg) / "metrics.jsonl") if "reward" in r]
    assert s["status"] == "completed"
    skipped = [r.get("skipped_prompts", 0) for r in rows]
    assert skipped[-1] > 0 and skipped == sorted(skipped)  # cumulative
    assert rows[-1]["examples"] + skipped[-1] == 3 * 8


# ----------------------------------------------------------------------------- validation split


def _problem(row: dict) -> str:
    return _messages(row)[0]["content"]


def test_validation_problems_are_disjoint_fixed_by_the_data_and_leave_the_test_problems_alone():
    """The rows launch.py loads for an RL run with rl.val_size: validation problems that are neither
    test nor training problems, the same for every train.seed and method (the data seed alone draws
    them), and test problems exactly those of the same config without a validation split."""
    def rows(*overrides: str):
        return run_rows(compose([*RL_SMALL, "data.num_examples=256", *overrides]))

    train_rows, test_rows, val_rows = rows("rl.val_size=32")
    assert len(val_rows) == 32 and len(test_rows) == 16 and len(train_rows) == 256
    val = {_problem(r) for r in val_rows}
    assert len(val) == 32  # no problem twice
    assert not val & {_problem(r) for r in test_rows} and not val & {_problem(r) for r in train_rows}
    for other in (["train.seed=5"], ["method=full"], ["lora.rank=1", "train.seed=2"]):
        assert rows("rl.val_size=32", *other)[2] == val_rows, other
    assert rows()[1] == test_rows  # rl.val_size never changes the judged problems
    assert rows("rl.val_size=32", "data.seed=1")[2] != val_rows
    # An SFT run ignores rl.*: no validation split.
    assert len(run_rows(compose(["data.num_examples=8", "data.eval_size=4", "rl.val_size=8"]))) == 2


def test_the_validation_draw_is_keyed_like_the_held_out_split():
    """tiny-math keys a problem by its numbers, not its wording: a validation problem shares its key
    with no test problem, no other validation problem and no training problem, on a stream that
    repeats keys in other wordings (as level 1's 100 problems do)."""
    def stream(seed: int):
        r = random.Random(seed)
        while True:
            k = r.randrange(40)
            yield k, {"key": k, "wording": r.randrange(1000)}

    train_rows, test_rows, val_rows = fixed_eval_split(stream, 0, 10, 8, "toy", n_val=6)
    keys = [r["key"] for r in val_rows]
    assert len(val_rows) == 6 and len(set(keys)) == 6
    assert not set(keys) & {r["key"] for r in test_rows} and not set(keys) & {r["key"] for r in train_rows}
    assert fixed_eval_split(stream, 0, 10, 8, "toy")[1] == test_rows  # the test rows do not move
    with pytest.raises(ValueError, match="lower rl.val_size"):
        fixed_eval_split(stream, 0, 10, 8, "toy", n_val=40)  # more than the keys left


def test_validation_accuracy_is_logged_at_each_eval_and_summarised(rl_small):
    cfg = rl_small("train.max_steps=3", "train.eval_every=2", "rl.val_size=8", "optim.lr=1e-3")
    s = train(cfg)
    rd = RunDir(run_dir(cfg))
    evals = [r for r in read_metrics(rd.metrics_path) if "eval_accuracy" in r]
    assert s["status"] == "completed" and [r["step"] for r in evals] == [0, 2, 3]
    for r in evals:  # in the eval line, in eval_solved's format: one character per validation problem
        assert len(r["val_solved"]) == 8 and set(r["val_solved"]) <= {"0", "1"}
        assert r["val_solved"].count("1") / 8 == r["val_accuracy"] and len(r["eval_solved"]) == 16
    assert s["base_val_accuracy"] == evals[0]["val_accuracy"] and s["final_val_accuracy"] == evals[-1]["val_accuracy"]
    # A summary rebuilt from the final checkpoint's counters and metrics.jsonl (a checkpoint written
    # before it carried the summary) has them too.
    state = load_state(rd.checkpoint_path)
    del state["summary"]
    rd.save_checkpoint(state)
    rebuilt = summary_from_final(cfg, run_id(cfg), rd)
    assert rebuilt["rebuilt_from"] == "metrics"
    for key in ("final_val_accuracy", "base_val_accuracy", "final_eval_accuracy", "base_eval_accuracy"):
        assert rebuilt[key] == s[key], key
