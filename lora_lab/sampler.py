"""Sampling completions from the current policy, with the sampler's per-token log-probabilities.

RL (lora_lab/rl.py) talks to a `Sampler`: `sync(model)` after the learner's weights change, then
`sample(prompts, n, max_new_tokens, temperature)` for n completions per prompt (temperature 0:
greedy). Each `Completion` carries its token ids, through the end-of-sequence token when the policy
stopped (the policy learns to stop, so that token is an action too), and the log-probability the
sampler gave each token under the distribution it sampled from (softmax of logits / temperature).
Those sampler log-probs are the denominators of the importance ratios; the learner recomputes the
numerators itself, so any mismatch between the two engines shows up as the `kl` metric and is
corrected by the ratio rather than silently ignored.

Two tiny-scale implementations run on the learner's own model object (so `sync` has nothing to do),
chosen by `rl.sampler`:

- `CachedSampler` (`rl.sampler=cache`, the default): a decoding loop on transformers' `DynamicCache`
  that runs each distinct prompt once, repeats its cache for the n samples, and drops a row from
  the batch as soon as it ends. On tiny-math (16 prompts x 8 samples, up to 32 new tokens, one CPU
  thread) it takes 0.38x the time of `generate` (`python experiments/bench_sampler.py`).
- `HFSampler` (`rl.sampler=generate`): transformers' `generate` with a KV cache, batched and
  left-padded, the reference the cached loop is tested against (the same greedy tokens, the same
  log-probs).

Both draw from torch's global generator, so a seeded run (and a resumed one, which restores that
generator) samples the same completions; the two draw in different orders, so their samples differ.

At the paper's scale a generation server takes its place behind the same two methods, with no
change to the objective or the loop:

- vLLM: `vllm serve <base> --enable-lora --max-lora-rank <r> --max-loras 2`. `sync` writes the
  adapter with `lora.export_peft(sites, cfg.lora, <dir>/step_<k>, base)` (peft format, which vLLM
  loads) and registers it with `POST /v1/load_lora_adapter {"lora_name": "step_<k>", "lora_path": ...}`
  (server started with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), unloading the previous one;
  `sample` posts the prompts' token ids to `/v1/completions` with `model="step_<k>"`, `n`,
  `temperature`, `max_tokens`, `logprobs=0` (the sampled token's own log-prob) and
  `return_tokens_as_token_ids=true`, and reads `choices[i].logprobs.token_logprobs`. FullFT has no
  adapter: `sync` must push the full weights instead (vLLM's weight-update RPC over NCCL from the
  trainer's ranks, or a checkpoint reload), which is why LoRA is the cheaper RL setup there.
- SGLang: `python -m sglang.launch_server --enable-lora --max-lora-rank <r> --lora-target-modules all`;
  `sync` calls `/load_lora_adapter`, and `sample` calls `/generate` with `input_ids`, `lora_path`,
  `sampling_params={"n", "temperature", "max_new_tokens"}` and `return_logprob=true`, reading
  `meta_info.output_token_logprobs`. FullFT: `/update_weights_from_disk` or its distributed variant.

Servers sample in bf16 with their own kernels, so their log-probs differ slightly from the learner's;
the importance ratio is computed against the sampler's numbers, never against a recomputation.

    python -m lora_lab.sampler "What is 3 + 4?"      # four samples from tiny-llama, with log-probs
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch


@dataclass
class Completion:
    prompt_index: int  # which prompt of the `sample` call it answers
    tokens: list[int]  # generated token ids, through the first end-of-sequence token if the policy stopped
    logprobs: list[float]  # the sampler's log-prob of each token in `tokens`
    text: str  # decoded tokens without special tokens
    finished: bool = field(default=False)  # the policy emitted end-of-sequence within max_new_tokens


@runtime_checkable
class Sampler(Protocol):
    def sync(self, model: torch.nn.Module) -> None:
        """Make the sampler's policy the learner's current weights."""

    def sample(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
               temperature: float) -> list[Completion]:
        """n completions per prompt, prompt-major (all of prompt 0, then prompt 1, ...).
        temperature 0: greedy decoding (then the log-probs are those of the unscaled logits)."""


def _left_pad(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask: every prompt ends where generation starts."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


class _OnModel:
    """Shared by the samplers that run on the learner's model: eval mode while sampling, chunks of
    at most `max_batch` sequences (whole prompts)."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_batch: int = 256):
        self.model, self.tok, self.max_batch = model, tokenizer, max_batch
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos

    def sync(self, model: torch.nn.Module) -> None:
        # The learner's own module: its weights are the policy already.
        self.model = model

    @torch.no_grad()
    def sample(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
               temperature: float) -> list[Completion]:
        if n < 1 or max_new_tokens < 1 or temperature < 0:
            raise ValueError(f"sample: n={n}, max_new_tokens={max_new_tokens} must be >= 1 and temperature={temperature} >= 0")
        was_training = self.model.training
        self.model.eval()
        try:
            out: list[Completion] = []
            per_chunk = max(1, self.max_batch // n)
            for start in range(0, len(prompts), per_chunk):
                out += self._generate(prompts[start:start + per_chunk], start, n, max_new_tokens, temperature)
            return out
        finally:
            self.model.train(was_training)

    def _completion(self, prompt_index: int, toks: list[int], logprobs: list[float]) -> Completion:
        finished = self.eos in toks
        stop = toks.index(self.eos) + 1 if finished else len(toks)
        return Completion(prompt_index=prompt_index, tokens=toks[:stop], logprobs=logprobs[:stop],
                          text=self.tok.decode(toks[:stop], skip_special_tokens=True), finished=finished)

    def _generate(self, prompts, offset, n, max_new_tokens, temperature) -> list[Completion]:
        raise NotImplementedError


class CachedSampler(_OnModel):
    """A decoding loop on transformers' DynamicCache: one forward pass over the (left-padded)
    distinct prompts, the cache repeated n times, then one token per step for the rows that have not
    ended; an ended row leaves the batch (its cache rows too), so late steps cost what the long
    completions need. Token t is drawn from softmax(logits / temperature) (argmax at temperature 0,
    log-probs then of the unscaled logits), the distribution its log-prob describes."""

    def _generate(self, prompts, offset, n, max_new_tokens, temperature) -> list[Completion]:
        from transformers import DynamicCache

        device = next(self.model.parameters()).device
        ids, mask = _left_pad(prompts, self.pad)
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits[:, -1]
        if n > 1:
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
        rows = logits.shape[0]
        alive = torch.arange(rows, device=device)  # batch row -> completion row
        nextpos = mask.sum(-1)  # position of the token about to be fed: prompt length, then + 1 a step
        tokens = torch.full((rows, max_new_tokens), self.pad, dtype=torch.long, device=device)
        logps = torch.zeros((rows, max_new_tokens), device=device)
        for t in range(max_new_tokens):
            scaled = logits.float() if temperature == 0 else logits.float() / temperature
            lp = torch.log_softmax(scaled, dim=-1)
            nxt = lp.argmax(-1) if temperature == 0 else torch.multinomial(lp.exp(), 1).squeeze(1)
            tokens[alive, t] = nxt
            logps[alive, t] = lp.gather(1, nxt[:, None]).squeeze(1)
            going = nxt != self.eos
            if t == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                alive, nxt, mask, nextpos = alive[keep], nxt[keep], mask[keep], nextpos[keep]
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            logits = self.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=nextpos[:, None],
                                past_key_values=cache, use_cache=True).logits[:, -1]
            nextpos = nextpos + 1
        tokens, logps = tokens.cpu().tolist(), logps.cpu().tolist()
        return [self._completion(offset + row // n, tokens[row], logps[row]) for row in range(rows)]


class HFSampler(_OnModel):
    """transformers `generate` with a KV cache on the learner's model, in chunks of at most
    `max_batch` sequences."""

    def _generate(self, prompts: Sequence[Sequence[int]], offset: int, n: int, max_new_tokens: int,
                  temperature: float) -> list[Completion]:
        from transformers import GenerationConfig

        device = next(self.model.parameters()).device
        ids, mask = _left_pad(prompts, self.pad)
        # Rows repeated here rather than by num_return_sequences, which greedy decoding refuses.
        ids, mask, width = ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0), ids.shape[1]
        greedy = temperature == 0
        # top_k=0 and top_p=1: sample from the full softmax, the distribution the log-probs describe.
        gen = GenerationConfig(do_sample=not greedy, temperature=None if greedy else temperature, top_k=None if greedy else 0,
                               top_p=None if greedy else 1.0, max_new_tokens=max_new_tokens,
                               eos_token_id=self.eos, pad_token_id=self.pad, bos_token_id=self.tok.bos_token_id,
                               use_cache=True, return_dict_in_generate=True, output_scores=True)
        res = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen)
        new = res.sequences[:, width:]
        # scores[t]: the processed logits (after temperature) the token at t was drawn from.
        logprobs = torch.stack([torch.log_softmax(s.float(), dim=-1).gather(1, new[:, t:t + 1]).squeeze(1)
                                for t, s in enumerate(res.scores)], dim=1).cpu()
        new, logprobs = new.cpu().tolist(), logprobs.tolist()
        return [self._completion(offset + row // n, new[row], logprobs[row]) for row in range(len(new))]


SAMPLERS = {"cache": CachedSampler, "generate": HFSampler}


if __name__ == "__main__":
    from lora_lab.config import ModelConfig
    from lora_lab.models import build_model

    model, tok = build_model(ModelConfig())
    question = sys.argv[1] if len(sys.argv) > 1 else "What is 3 + 4?"
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True)["input_ids"]
    for c in CachedSampler(model, tok).sample([prompt], n=4, max_new_tokens=32, temperature=1.0):
        print(f"{sum(c.logprobs):8.2f}  {c.text!r}")
