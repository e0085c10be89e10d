"""Post-training data: data set registry, chat tokenization with assistant-only labels, and the
deterministic batch order shared by every run of a sweep.

A data set is a function `DataConfig -> (train_rows, eval_rows)`; rows are dicts in the schema of
the real data set they stand for (tiny-tulu: allenai/tulu-3-sft-mixture's `messages`). Batches are
drawn in an order that depends only on `train.seed` and the data config, so LoRA and FullFT runs of
one sweep see the same sequences at the same step.

    python -m lora_lab.data   # prints a few tiny-tulu examples with their assistant masks
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from lora_lab.tiny_world import TINY_DATASETS

if TYPE_CHECKING:
    from lora_lab.config import Config, DataConfig

IGNORE_INDEX = -100

# name -> loader(DataConfig) -> (train_rows, eval_rows), rows in the schema of the real set.
DATASETS: dict[str, Callable[["DataConfig"], tuple[list[dict], list[dict]]]] = {**TINY_DATASETS}

# ----------------------------------------------------------------------------- tokenization


def _messages(row: dict) -> list[dict]:
    if "messages" in row:
        return row["messages"]
    if "conversations" in row:  # OpenThoughts/ShareGPT: {"from": "human"|"gpt", "value": ...}
        role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
        return [{"role": role[t["from"]], "content": t["value"]} for t in row["conversations"]]
    raise KeyError(f"row has neither 'messages' nor 'conversations': keys {sorted(row)}")


def encode_chat(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX outside assistant turns) of one conversation.

    Uses the template's {% generation %} blocks when it has them; otherwise marks each assistant
    turn by rendering the conversation before it (with the generation prompt) and after it, which
    is exact for prefix-stable templates and then also counts the turn's trailing separator."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if "{% generation %}" in template or "{%- generation %}" in template:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        def render(msgs, gen=False):
            return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=gen)["input_ids"])

        ids, mask = [], []
        for i, m in enumerate(messages):
            full = render(messages[: i + 1])
            if m["role"] == "assistant":
                # The turn's header (e.g. "<|start_header_id|>assistant...") is prompt, not target.
                head = render(messages[:i], gen=True) if i else []
                if full[: len(head)] != head or head[: len(ids)] != ids:
                    head = ids
                ids, mask = head, mask + [0] * (len(head) - len(ids))
                mask += [1] * (len(full) - len(ids))
            else:
                mask += [0] * (len(full) - len(ids))
            ids = full
    ids, mask = ids[:max_len], mask[:max_len]
    labels = [t if k else IGNORE_INDEX for t, k in zip(ids, mask)]
    return ids, labels


@dataclass
class TokenizedSplit:
    ids: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(rows: list[dict], tokenizer, max_len: int) -> TokenizedSplit:
    ids, labels = [], []
    for row in rows:
        i, l = encode_chat(tokenizer, _messages(row), max_len)
        # The next-token loss needs a target after position 0; drop rows truncated to no target.
        if sum(x != IGNORE_INDEX for x in l[1:]) == 0:
            continue
        ids.append(torch.tensor(i, dtype=torch.long))
        labels.append(torch.tensor(l, dtype=torch.long))
    return TokenizedSplit(ids, labels)


def collate(split: TokenizedSplit, idx: list[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded micro-batch: input_ids, attention_mask, labels (IGNORE_INDEX on padding)."""
    n = max(len(split.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), n), pad_id, dtype=torch.long)
    labels = torch.full((len(idx), n), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(idx), n), dtype=torch.long)
    for row, i in enumerate(idx):
        k = len(split.ids[i])
        input_ids[row, :k] = split.ids[i]
        labels[row, :k] = split.labels[i]
        attn[row, :k] = 1
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels}


# ----------------------------------------------------------------------------- batch order


def order_seed(cfg: "Config") -> int:
    """Seed of the data order: train.seed and the data config only (not method, rank or LR)."""
    key = json.dumps({"seed": cfg.train.seed, "data": vars(cfg.data)}, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & (2**62 - 1)


class BatchOrder:
    """Step -> example indices. Each epoch is a fresh permutation; the last partial batch of an
    epoch is dropped so every step has exactly batch_size sequences."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n < batch_size:
            raise ValueError(f"optim.batch_size={batch_size} is larger than the {n} training examples; lower it or raise data.size")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size
        self._perm: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perm:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perm[epoch]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def batch(self, step: int) -> list[int]:
        """Indices of the examples of optimizer step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self._permutation(epoch)
        return perm[k * self.batch_size : (k + 1) * self.batch_size]


def load_data(cfg: "Config", tokenizer) -> tuple[TokenizedSplit, TokenizedSplit]:
    train_rows, eval_rows = DATASETS[cfg.data.name](cfg.data)
    return tokenize(train_rows, tokenizer, cfg.data.max_seq_len), tokenize(eval_rows, tokenizer, cfg.data.max_seq_len)


if __name__ == "__main__":
    from lora_lab.models import load_tokenizer
    from lora_lab.tiny_world import tiny_tulu_rows

    tok = load_tokenizer("tiny-llama")
    for row in tiny_tulu_rows(3, 0):
        ids, labels = encode_chat(tok, row["messages"], 256)
        print(repr(tok.decode(ids)))
        print("  target:", repr(tok.decode([t for t in labels if t != IGNORE_INDEX])))
