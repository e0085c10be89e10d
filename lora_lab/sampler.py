"""Sampling completions from the current policy, with the sampler's per-token log-probabilities.

RL (lora_lab/rl.py) talks to a `Sampler`: `sync(model)` after the learner's weights change, then
`sample(prompts, n, max_new_tokens, temperature)` for n completions per prompt (temperature 0:
greedy). Each `Completion` carries its token ids, through the first turn terminator when the
policy stopped (the policy learns to stop, so that token is an action too), and the
log-probability the sampler gave each token under the distribution it sampled from (softmax of
logits / temperature). Those sampler log-probs are the denominators of the importance ratios; the
learner recomputes the numerators itself, so any mismatch between the two engines shows up as the
`kl` metric and is corrected by the ratio rather than silently ignored.

Terminators (`stop_token_ids`). A chat turn ends with a token that is often not the tokenizer's
end-of-sequence: Llama-3's `<|eot_id|>` (eos is `<|end_of_text|>`), ChatML's and Qwen's `<|im_end|>`
(eos `<|endoftext|>`). A sampler that stopped at eos alone would run every completion to
max_new_tokens and let the reward parse what the model wrote after its answer. Sampling stops at the
first of: the tokenizer's eos, the model's generation_config.json `eos_token_id` (an id or a list;
read from local files only: the model directory or the hub cache, `generation_eos`), and the
end-of-turn tokens the chat template writes (`<|eot_id|>`, `<|eom_id|>`, `<|im_end|>`,
`<end_of_turn>`, `<|end|>`: those in the template text that are single tokens of the tokenizer;
data.chat_template's presets llama3 and chatml are installed on the tokenizer before this runs). A
completion is cut after its first terminator: the terminator is kept in `tokens` (and trained on,
as the SFT targets include the end-of-turn token inside the template's {% generation %} block),
and `text`, which the reward reads, is the decoded tokens before it.

Two tiny-scale implementations run on the learner's own model object (so `sync` has nothing to do),
chosen by `rl.sampler`, each in chunks of at most `rl.sample_batch` sequences per forward:

- `CachedSampler` (`rl.sampler=cache`, the default): a decoding loop on transformers' `DynamicCache`
  that runs each distinct prompt once, repeats its cache for the n samples, and drops a row from
  the batch as soon as it ends. On tiny-math (16 prompts x 8 samples, up to 32 new tokens, one CPU
  thread) it takes 0.38x the time of `generate` (`python experiments/bench_sampler.py`).
- `HFSampler` (`rl.sampler=generate`): transformers' `generate` with a KV cache, batched and
  left-padded, the reference the cached loop is tested against (the same greedy tokens, the same
  log-probs).

Both draw from torch's global generator, so a seeded run (and a resumed one, which restores that
generator) samples the same completions; the two draw in different orders, so their samples differ.

At the paper's scale vLLM takes their place behind the same two methods (`rl.sampler=vllm`,
lora_lab/vllm_sampler.py): an in-process engine that gets the LoRA adapter each `sync` (peft format,
a new adapter id) and the prompts as token ids, and returns the sampled tokens with their log-probs.
Engines sample in bf16 with their own kernels, so their log-probs differ slightly from the
learner's; the importance ratio is computed against the sampler's numbers, never against a
recomputation.

    python -m lora_lab.sampler "What is 3 + 4?"      # four samples from tiny-llama, with log-probs
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:
    from lora_lab.config import ModelConfig

# End-of-turn tokens of the chat formats in use: Llama-3 (<|eot_id|>; <|eom_id|> ends a tool-call
# message), ChatML and Qwen (<|im_end|>), Gemma (<end_of_turn>), Phi-3 and the tiny world (<|end|>).
END_OF_TURN = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")
DEFAULT_SAMPLE_BATCH = 256  # most sequences per forward pass; RLConfig.sample_batch's default


@dataclass
class Completion:
    prompt_index: int  # which prompt of the `sample` call it answers
    tokens: list[int]  # generated token ids, through the first terminator if the policy stopped
    logprobs: list[float]  # the sampler's log-prob of each token in `tokens`
    text: str  # the decoded tokens before the terminator, without special tokens: what the reward reads
    finished: bool = field(default=False)  # the policy emitted a terminator within max_new_tokens


@runtime_checkable
class Sampler(Protocol):
    def sync(self, model: torch.nn.Module) -> None:
        """Make the sampler's policy the learner's current weights."""

    def sample(self, prompts: Sequence[Sequence[int]], n: int, max_new_tokens: int,
               temperature: float) -> list[Completion]:
        """n completions per prompt, prompt-major (all of prompt 0, then prompt 1, ...).
        temperature 0: greedy decoding (then the log-probs are those of the unscaled logits)."""


# ----------------------------------------------------------------------------- terminators


def _single_token(tok, text: str) -> int | None:
    """The id of `text` if the tokenizer has it as one token (an added or special token), else None."""
    tid = tok.convert_tokens_to_ids(text)
    if not isinstance(tid, int) or tid < 0 or (tid == tok.unk_token_id and text != tok.unk_token):
        return None
    return tid if tok.convert_ids_to_tokens(tid) == text else None


def _template_text(tok) -> str:
    template = getattr(tok, "chat_template", None) or ""
    return "\n".join(template.values()) if isinstance(template, dict) else str(template)


def stop_token_ids(tok, generation_eos: Iterable[int] = ()) -> list[int]:
    """Every token that ends a completion: the tokenizer's eos, the generation config's eos ids
    (`generation_eos`) and the end-of-turn tokens of END_OF_TURN that the tokenizer's chat template
    writes and the tokenizer holds as one token. Sorted, no repeats."""
    ids = {int(i) for i in generation_eos if i is not None}
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    template = _template_text(tok)
    for text in END_OF_TURN:
        tid = _single_token(tok, text) if text in template else None
        if tid is not None:
            ids.add(tid)
    return sorted(ids)


def generation_eos(cfg: ModelConfig) -> list[int]:
    """generation_config.json's eos_token_id (an id or a list) of the model, read from local files
    only (a tiny preset's shipped directory, a local model directory, or the hub cache); [] when there
    is none here. Llama-3.1's lists <|end_of_text|>, <|eom_id|> and <|eot_id|> there."""
    from pathlib import Path

    from transformers import GenerationConfig

    from lora_lab.models import base_reference
    from lora_lab.tiny.presets import TINY_CONFIGS

    source = base_reference(cfg)
    if cfg.name in TINY_CONFIGS and not Path(source).is_dir():
        return []  # a seeded random init: no files
    try:
        gen = GenerationConfig.from_pretrained(source, revision=None if Path(source).is_dir() else cfg.revision,
                                               local_files_only=True)
    except (OSError, ValueError, TypeError):
        return []
    eos = gen.eos_token_id
    return [int(eos)] if isinstance(eos, int) else [int(i) for i in eos or []]


def cut_at_stop(tokens: Sequence[int], stop_ids: Iterable[int]) -> tuple[int, bool]:
    """(how many tokens to keep, whether a terminator was met): through the first terminator."""
    stops = set(stop_ids)
    for i, t in enumerate(tokens):
        if t in stops:
            return i + 1, True
    return len(tokens), False


def completion(prompt_index: int, tokens: Sequence[int], logprobs: Sequence[float], stop_ids: Iterable[int],
               decode) -> Completion:
    """A Completion cut after its first terminator: `tokens` and `logprobs` through it, `text` (what
    the reward reads) the decoded tokens before it. `decode(ids) -> str`."""
    keep, finished = cut_at_stop(tokens, stop_ids)
    toks = [int(t) for t in tokens[:keep]]
    return Completion(prompt_index=prompt_index, tokens=toks, logprobs=[float(x) for x in logprobs[:keep]],
                      text=decode(toks[:-1] if finished else toks), finished=finished)


# ----------------------------------------------------------------------------- on the learner's model


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
    at most `max_batch` sequences (whole prompts: a prompt's n samples share one chunk), stopping at
    `stop_ids` (default: `stop_token_ids(tokenizer)`)."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_batch: int = DEFAULT_SAMPLE_BATCH,
                 stop_ids: Iterable[int] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        self.model, self.tok, self.max_batch = model, tokenizer, max_batch
        self.stop_ids = sorted(set(stop_ids)) if stop_ids is not None else stop_token_ids(tokenizer)
        if not self.stop_ids:
            raise ValueError("no terminator: the tokenizer has no eos token and none was given")
        eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else self.stop_ids[0])

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
        return completion(prompt_index, toks, logprobs, self.stop_ids,
                          lambda ids: self.tok.decode(ids, skip_special_tokens=True))

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
        stops = torch.tensor(self.stop_ids, dtype=torch.long, device=device)
        for t in range(max_new_tokens):
            scaled = logits.float() if temperature == 0 else logits.float() / temperature
            lp = torch.log_softmax(scaled, dim=-1)
            nxt = lp.argmax(-1) if temperature == 0 else torch.multinomial(lp.exp(), 1).squeeze(1)
            tokens[alive, t] = nxt
            logps[alive, t] = lp.gather(1, nxt[:, None]).squeeze(1)
            going = ~torch.isin(nxt, stops)
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
    `max_batch` sequences; every terminator is one of generate's eos ids (a row that ends is padded
    while the others go on, and the padding is cut off)."""

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
                               eos_token_id=list(self.stop_ids), pad_token_id=self.pad, bos_token_id=self.tok.bos_token_id,
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
