"""RL with the paper's policy-gradient objective (task=rl), LoRA or FullFT, tiny or paper scale.

One RL step:

1. take rl.prompts_per_step training problems, in an order that depends on train.seed and the data
   config only (so every run of a sweep sees the same problems at the same step);
2. sample rl.group_size completions of each from the current policy (lora_lab/sampler.py; vLLM
   with rl.sampler=vllm, lora_lab/vllm_sampler.py), keeping the sampler's per-token log-probs; a
   completion ends at the first turn terminator (eos, generation_config's eos ids, the chat
   template's end-of-turn token such as <|eot_id|> or <|im_end|>), which it keeps as its last token
   (the policy learns to stop, as SFT trains on the end-of-turn token), and its reward reads only the
   text before it;
3. score them (lora_lab/rewards.py) and centre each reward on its group's mean (GRPO-like; divided
   by the group's std as well with rl.normalize_std);
4. take rl.updates_per_batch optimizer steps, each on a slice of whole groups, on the loss below.

Objective ("LoRA Without Regret", RL section; the importance-sampling policy-gradient loss):

    L(theta) = -(1/N) sum_i A_i sum_{t in completion i} rho_{i,t},
    rho_{i,t} = p_theta(y_{i,t} | prefix) / p_sampler(y_{i,t} | prefix),   A_i = R_i - mean of R in i's group

with the sampler's probability a detached constant. Normalisation: summed over each completion's
tokens (the paper's "sum over tokens": a completion's tokens share its advantage, and longer
completions carry more terms), averaged over the N completions of the optimizer step (so the LR
does not depend on rl.prompts_per_step or rl.group_size). Where sampler and learner coincide
(rho = 1) the gradient is REINFORCE's, -(1/N) sum_i A_i sum_t grad log p_theta(y_{i,t}); the ratio
corrects for the later updates of a batch (updates_per_batch > 1) and for numerical differences
between the sampling engine and the learner. rl.clip_eps adds PPO's per-token clipping,
min(rho A, clip(rho, 1 - eps, 1 + eps) A); off by default, as in the paper. Log-probs of both sides
are of softmax(logits / rl.temperature), the distribution sampled from.

Metrics (metrics.jsonl), one line per RL step: `reward` (mean over the step's completions),
`accuracy` (fraction scored correct), `completion_len` (tokens), `entropy` (mean per-token entropy
of the learner's distribution at the sampled positions), `ratio_mean`, `ratio_std` (rho), `kl`
(KL(sampler || learner) per token, k3 estimator E[rho - 1 - log rho]), the last four over the
tokens the learner ran in the step's updates: those of completions with a nonzero advantage (the
others add exactly nothing to the gradient and are not run; null when no group had any), `lr`,
`wall_s`, `grad_norm` (mean over the step's updates), `examples` (prompts seen), `tokens` (prompt +
completion tokens), and `loss`, `finished` (fraction that ended with a terminator),
`zero_adv_groups` (fraction of groups with equal rewards: no signal), `sample_s`, `learn_s`.
Eval lines: `eval_accuracy` by greedy decoding of the data.eval_size held-out problems at step 0
(the base model), every train.eval_every steps and at the end, and `eval_solved`, which of them
("1"/"0" per problem, in the held-out order) for paired comparisons (lora_lab/report.py, C5). With
rl.val_size > 0 the same lines have `val_accuracy` and `val_solved`, the same greedy scoring of
rl.val_size validation problems: held out after the test problems by the data loader
(lora_lab/data.py load_rows), so the test problems stay those of rl.val_size=0, and seeded by the
data config alone, so every arm and train.seed of a sweep scores the same ones. The analysis
chooses each arm's LR on them and judges C5 on the test problems (lora_lab/sections.py rl_section).

summary.json: as SFT's, plus `final_reward` (mean reward over the last tenth of the steps, at least
one), `final_eval_accuracy`, `base_eval_accuracy` (and with rl.val_size, `final_val_accuracy`,
`base_val_accuracy`). Run directory, checkpoint, resume and failure
handling are SFT's (lora_lab/learner.py). A run diverges when the loss or the gradient norm is not
finite (train.diverge_loss bounds SFT's loss only). In RL, data.max_seq_len bounds the prompt:
longer prompts are skipped (counted as `skipped_prompts`); completions add rl.max_new_tokens.

    lora-lab train task=rl data=tiny-math 'data.levels=[1,2]' method=lora lora.rank=1 optim.lr=1e-3
    lora-lab sweep tiny/rl
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch

from lora_lab import lora as lora_mod
from lora_lab.config import Config
from lora_lab.data import BatchOrder, _messages, order_seed
from lora_lab.models import base_reference, target_logits
from lora_lab.rewards import reference_for, reward_task, score
from lora_lab.runs import RunDir, read_metrics
from lora_lab.sampler import SAMPLERS, Completion, Sampler, generation_eos, stop_token_ids
from lora_lab.learner import (Learner, Progress, build_learner, record_failure, resume, save_checkpoint,
                              start_logging, wandb_summary)


# ----------------------------------------------------------------------------- objective


def group_advantages(rewards: torch.Tensor, normalize_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """rewards [P, G] (G completions of each of P prompts) -> advantages [P, G]: reward minus the
    mean of its group; with normalize_std also divided by the group's std (population std, + eps)."""
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    if normalize_std:
        adv = adv / (rewards.std(dim=1, unbiased=False, keepdim=True) + eps)
    return adv


def policy_loss(logp: torch.Tensor, sampler_logp: torch.Tensor, advantages: torch.Tensor, num_sequences: int,
                clip_eps: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The importance-sampled policy-gradient loss over a flat list of completion tokens.

    logp: the learner's log-prob of each token (with grad); sampler_logp: the sampler's (detached
    here); advantages: the advantage of each token's completion; num_sequences: N, the completions
    of the whole optimizer step (micro-batch losses add up to the step's loss).
    Returns (loss, rho) with rho the detached per-token ratios."""
    rho = torch.exp(logp - sampler_logp.detach())
    per_token = rho * advantages
    if clip_eps is not None:
        per_token = torch.minimum(per_token, torch.clamp(rho, 1 - clip_eps, 1 + clip_eps) * advantages)
    return -per_token.sum() / num_sequences, rho.detach()


def completion_logprobs(model, batch: dict[str, torch.Tensor], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The learner's log-prob (with grad) and entropy (detached) of softmax(logits / temperature) at
    every completion token of a right-padded batch, flattened in row-major order."""
    where = batch["target_mask"]  # [B, L-1]: next-token positions whose target is a completion token
    with lora_mod.cached():
        selected = target_logits(model, batch["input_ids"], batch["attention_mask"], where).float() / temperature
    logp_all = torch.log_softmax(selected, dim=-1)
    logp = logp_all.gather(1, batch["input_ids"][:, 1:][where].unsqueeze(1)).squeeze(1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


# ----------------------------------------------------------------------------- data


@dataclass
class Prompt:
    ids: list[int]
    reference: str


def encode_prompt(row: dict, tok, task: str, instruction: str | None = None) -> Prompt:
    """The conversation before the row's (last) assistant turn, with the generation prompt on and
    `instruction` appended to the last user turn."""
    msgs = _messages(row)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    msgs = [dict(m) for m in msgs[:last]]
    if instruction:
        msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{instruction}"
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    return Prompt(list(ids), reference_for(task, row))


def collate_rl(prompts: Sequence[Prompt], completions: Sequence[Completion], advantages: Sequence[float],
               pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion sequences, the completion-target mask, and per completion
    token (row-major) the sampler's log-prob and the completion's advantage."""
    seqs = [prompts[c.prompt_index].ids + c.tokens for c in completions]
    n = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), n), dtype=torch.long)
    target_mask = torch.zeros((len(seqs), n - 1), dtype=torch.bool)
    for row, (s, c) in enumerate(zip(seqs, completions)):
        input_ids[row, :len(s)] = torch.tensor(s)
        attn[row, :len(s)] = 1
        p = len(s) - len(c.tokens)
        target_mask[row, p - 1:p - 1 + len(c.tokens)] = True
    sampler_logp = torch.tensor([x for c in completions for x in c.logprobs], dtype=torch.float32)
    adv = torch.tensor([a for c, a in zip(completions, advantages) for _ in c.tokens], dtype=torch.float32)
    return {"input_ids": input_ids, "attention_mask": attn, "target_mask": target_mask,
            "sampler_logp": sampler_logp, "advantages": adv}


class PromptCache:
    """Training prompts encoded when first used (a real set may have 100k rows)."""

    def __init__(self, rows: Sequence[dict], tok, task: str, instruction: str | None):
        self.rows, self.tok, self.task, self.instruction = rows, tok, task, instruction
        self.cache: dict[int, Prompt] = {}

    def __getitem__(self, i: int) -> Prompt:
        if i not in self.cache:
            self.cache[i] = encode_prompt(self.rows[i], self.tok, self.task, self.instruction)
        return self.cache[i]


@torch.no_grad()
def eval_accuracy(sampler: Sampler, prompts: Sequence[Prompt], task: str, max_new_tokens: int) -> tuple[float, str]:
    """Fraction of held-out problems solved by greedy decoding, and which: a string with "1" or "0"
    per problem in the held-out order (the same problems every eval, so two evals, or two runs, can
    be compared problem by problem)."""
    outs = sampler.sample([p.ids for p in prompts], n=1, max_new_tokens=max_new_tokens, temperature=0.0)
    solved = "".join("1" if score(task, c.text, prompts[c.prompt_index].reference) == 1.0 else "0" for c in outs)
    return solved.count("1") / len(prompts), solved


# ----------------------------------------------------------------------------- the loop


def build_sampler(cfg: Config, learner: Learner) -> Sampler:
    """The sampler rl.sampler names, stopping at every turn terminator of the model and its chat
    template: on the learner's model (cache, generate; chunks of rl.sample_batch sequences), or a
    vLLM engine that gets the learner's LoRA adapter at each sync."""
    stops = stop_token_ids(learner.tok, generation_eos(cfg.model))
    if cfg.rl.sampler == "vllm":
        from lora_lab.vllm_sampler import VLLMSampler

        base = base_reference(cfg.model)
        return VLLMSampler.build(cfg, learner.tok, stops, model=base,
                                 export=lambda path: lora_mod.export_peft(learner.sites, cfg.lora, path, base))
    return SAMPLERS[cfg.rl.sampler](learner.model, learner.tok, max_batch=cfg.rl.sample_batch, stop_ids=stops)


def _learn(cfg: Config, learner: Learner, prompts: Sequence[Prompt], completions: list[Completion],
           advantages: list[float], pad_id: int) -> dict:
    """One optimizer step on these completions: gradient over length-sorted micro-batches, global
    norm clipping if set, then the step unless the loss or gradient is not finite.

    A completion whose advantage is 0 (every one of a group whose rewards are all equal) adds
    exactly 0 to the loss and its gradient, clipped or not, so the learner does not run it: the
    gradient is the same, the optimizer still steps (Adam's moments move on a zero gradient too),
    and the ratio, KL and entropy statistics cover the completions that were run."""
    model, device = learner.model, learner.device
    n = len(completions)
    active = [i for i in range(n) if advantages[i] != 0]
    micro = cfg.optim.micro_batch_size or max(d for d in range(1, min(8, n) + 1) if n % d == 0)
    order = sorted(active, key=lambda i: len(prompts[completions[i].prompt_index].ids) + len(completions[i].tokens))
    # Zeros rather than None: parameters with no gradient this step are still stepped by Adam. A
    # gradient that was never allocated (a fresh or resumed process whose first step has no signal)
    # is allocated here, or Adam would skip the step that an uninterrupted run takes.
    learner.opt.zero_grad(set_to_none=False)
    for p in learner.trainable:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    loss_sum, rhos, entropies, kls = 0.0, [torch.empty(0)], [torch.empty(0)], [torch.empty(0)]
    for start in range(0, len(order), micro):
        idx = order[start:start + micro]
        batch = collate_rl(prompts, [completions[i] for i in idx], [advantages[i] for i in idx], pad_id)
        batch = {k: v.to(device) for k, v in batch.items()}
        logp, entropy = completion_logprobs(model, batch, cfg.rl.temperature)
        loss, rho = policy_loss(logp, batch["sampler_logp"], batch["advantages"], n, cfg.rl.clip_eps)
        loss.backward()
        loss_sum += loss.item()
        rhos.append(rho.cpu())
        entropies.append(entropy.cpu())
        # k3 estimator of KL(sampler || learner) per token: nonnegative, unbiased under the sampler.
        kls.append((rho - 1 - torch.log(rho)).cpu())
    grad_norm = torch.nn.utils.clip_grad_norm_(learner.trainable, cfg.optim.grad_clip or math.inf).item()
    ok = math.isfinite(loss_sum) and math.isfinite(grad_norm)
    if ok:
        learner.opt.step()
    return {"loss": loss_sum, "grad_norm": grad_norm, "rho": torch.cat(rhos), "entropy": torch.cat(entropies),
            "kl": torch.cat(kls), "ok": ok}


def train_rl(cfg: Config, rid: str, rd: RunDir, rows: tuple) -> dict:
    """One RL run (called by train.train with the run directory locked); returns its summary."""
    t_launch = time.monotonic()
    rd.write_config(cfg)
    rd.clear_summary()
    summary = {"run_id": rid, "method": cfg.method, "task": "rl", "status": "failed", "steps": 0}
    run, sampler = None, None
    try:
        learner = build_learner(cfg)
        model, tok = learner.model, learner.tok
        summary.update(trainable_params=learner.trainable_params, total_params=learner.total_params)
        task, rl = reward_task(cfg.data.name), cfg.rl
        train_rows, eval_rows, *rest = rows
        if rl.val_size and not rest:
            raise ValueError(f"rl.val_size={rl.val_size}: no validation rows were passed; load the rows with "
                             f"lora_lab.data.run_rows(cfg)")
        train_prompts = PromptCache(train_rows, tok, task, rl.instruction)

        def held_prompts(split: Sequence[dict], what: str) -> list[Prompt]:
            kept = [p for p in (encode_prompt(r, tok, task, rl.instruction) for r in split)
                    if len(p.ids) <= cfg.data.max_seq_len]
            if not kept:
                raise ValueError(f"data.max_seq_len={cfg.data.max_seq_len}: every {what} prompt is longer; raise it")
            return kept

        eval_prompts = held_prompts(eval_rows, "held-out")
        val_prompts = held_prompts(rest[0], "validation") if rl.val_size else []
        order = BatchOrder(len(train_rows), rl.prompts_per_step, order_seed(cfg))
        total = cfg.train.max_steps or cfg.train.epochs * order.steps_per_epoch
        sampler = build_sampler(cfg, learner)
        eval_tokens = rl.eval_max_new_tokens or rl.max_new_tokens

        step, wall, tokens, examples, skipped, base_acc, base_val = 0, 0.0, 0, 0, 0, None, None
        state = resume(cfg, rid, rd, learner)
        if state is not None:
            step, wall, tokens, examples, skipped, base_acc = (state["step"], state["wall_s"], state["tokens"],
                                                               state["examples"], state["skipped_prompts"],
                                                               state["base_eval_accuracy"])
            base_val = state.get("base_val_accuracy")
        # A fresh start drops the lines of an attempt that died before its first checkpoint (step 0 included).
        run = start_logging(cfg, rid, rd, learner.device, step, keep_upto_step=step if state is not None else -1)
        summary.update(max_steps=total, steps=step)

        def log(row: dict) -> None:
            rd.log(row)
            if run:
                # eval_solved (a string per held-out set) stays in metrics.jsonl: wandb charts numbers.
                run.log({k: v for k, v in row.items() if k != "step" and v is not None and not isinstance(v, str)},
                        step=row["step"])

        def evaluate(at: int) -> tuple[float, float | None]:
            """Test accuracy, and validation accuracy (None without rl.val_size), logged in one line."""
            acc, solved = eval_accuracy(sampler, eval_prompts, task, eval_tokens)
            row = {"step": at, "eval_accuracy": acc, "eval_solved": solved}
            val_acc = None
            if val_prompts:
                val_acc, val_solved = eval_accuracy(sampler, val_prompts, task, eval_tokens)
                row.update(val_accuracy=val_acc, val_solved=val_solved)
            log(row)
            return acc, val_acc

        def checkpoint(final: bool = False, **extra) -> None:
            val = {"base_val_accuracy": base_val} if val_prompts else {}
            save_checkpoint(cfg, rd, learner, final, step=step, wall_s=wall, tokens=tokens, examples=examples,
                            skipped_prompts=skipped, base_eval_accuracy=base_acc, **val, **extra)

        if base_acc is None:
            sampler.sync(model)
            base_acc, base_val = evaluate(0)
        summary["base_eval_accuracy"] = base_acc
        if val_prompts:
            summary["base_val_accuracy"] = base_val
        eval_acc, val_acc = base_acc, base_val

        progress = Progress(cfg, total, step, rid[:40], metric="reward")
        status = "completed"
        while step < total:
            t0 = time.perf_counter()
            idx = order.batch(step)
            batch_prompts = [train_prompts[i] for i in idx]
            keep = [p for p in batch_prompts if len(p.ids) <= cfg.data.max_seq_len]
            skipped += len(batch_prompts) - len(keep)
            if not keep:
                raise ValueError(f"data.max_seq_len={cfg.data.max_seq_len}: every prompt of step {step + 1} is longer; raise it")
            sampler.sync(model)
            completions = sampler.sample([p.ids for p in keep], rl.group_size, rl.max_new_tokens, rl.temperature)
            t_sample = time.perf_counter() - t0
            rewards = torch.tensor([score(task, c.text, keep[c.prompt_index].reference) for c in completions])
            adv = group_advantages(rewards.view(len(keep), rl.group_size), rl.normalize_std).view(-1).tolist()

            # Each update takes whole groups; every group was sampled before the first update.
            per_update = math.ceil(len(keep) / rl.updates_per_batch) * rl.group_size
            results = []
            for start in range(0, len(completions), per_update):
                res = _learn(cfg, learner, keep, completions[start:start + per_update], adv[start:start + per_update],
                             tok.pad_token_id)
                results.append(res)
                if not res["ok"]:
                    break
            if not results[-1]["ok"]:
                status = "diverged"
                log({"step": step + 1, "loss": results[-1]["loss"], "grad_norm": results[-1]["grad_norm"],
                     "lr": cfg.optim.lr, "diverged": True})
                summary["diverged_at_step"] = step + 1
                break
            step += 1
            wall += time.perf_counter() - t0
            n_tokens = sum(len(keep[c.prompt_index].ids) + len(c.tokens) for c in completions)
            tokens += n_tokens
            examples += len(keep)
            rho, kl = torch.cat([r["rho"] for r in results]), torch.cat([r["kl"] for r in results])
            entropy = torch.cat([r["entropy"] for r in results])
            groups = rewards.view(len(keep), rl.group_size)
            ran = len(rho) > 0  # some completion had a nonzero advantage

            def stat(x: torch.Tensor, f) -> float | None:
                return f(x).item() if ran else None

            row = {
                "step": step, "reward": rewards.mean().item(), "accuracy": (rewards == 1.0).float().mean().item(),
                "completion_len": sum(len(c.tokens) for c in completions) / len(completions),
                "entropy": stat(entropy, torch.mean), "ratio_mean": stat(rho, torch.mean),
                "ratio_std": stat(rho, lambda x: x.std(unbiased=False)), "kl": stat(kl, torch.mean),
                "loss": sum(r["loss"] for r in results) / len(results), "lr": cfg.optim.lr, "wall_s": round(wall, 4),
                "grad_norm": sum(r["grad_norm"] for r in results) / len(results), "examples": examples, "tokens": tokens,
                "finished": sum(c.finished for c in completions) / len(completions),
                "zero_adv_groups": (groups.max(1).values == groups.min(1).values).float().mean().item(),
                "sample_s": round(t_sample, 4), "learn_s": round(time.perf_counter() - t0 - t_sample, 4),
            }
            if skipped:
                row["skipped_prompts"] = skipped
            log(row)
            progress.update(step, row["reward"])
            if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < total:
                eval_acc, val_acc = evaluate(step)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0 and step < total:
                checkpoint()
        progress.close()

        if status == "completed":
            sampler.sync(model)
            eval_acc, val_acc = evaluate(step)
            if learner.sites:
                lora_mod.export_peft(learner.sites, cfg.lora, rd.adapter_path, base_reference(cfg.model))
        rewards_seen = [r["reward"] for r in read_metrics(rd.metrics_path) if "reward" in r]
        last = rewards_seen[-max(1, len(rewards_seen) // 10):]
        summary.update(status=status, steps=step, final_reward=sum(last) / len(last) if last else None,
                       final_eval_accuracy=eval_acc if status == "completed" else None,
                       wall_s=round(wall, 3), launch_wall_s=round(time.monotonic() - t_launch, 3), tokens=tokens,
                       examples=examples, step_time_s=round(wall / step, 5) if step else None)
        if val_prompts:
            summary["final_val_accuracy"] = val_acc if status == "completed" else None
        if status == "completed":
            checkpoint(final=True, summary=summary)
        rd.write_summary(summary)
        if run:
            wandb_summary(run, summary)
        if rewards_seen:
            progress.update(step, rewards_seen[-1], force=True)
        return summary
    except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
        stop = record_failure(rd, summary, exc)
        if stop is not exc:
            raise stop from None
        raise
    finally:
        if run:
            run.finish()
        if sampler is not None and hasattr(sampler, "close"):
            sampler.close()
