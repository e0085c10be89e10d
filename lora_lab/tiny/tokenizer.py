"""The tiny models' tokenizer: a byte-level BPE trained offline with `tokenizers` on generated text,
saved as a transformers tokenizer whose chat template marks assistant tokens with
{% generation %} blocks (so `apply_chat_template(..., return_assistant_tokens_mask=True)` works).

    python -m lora_lab.tiny.tokenizer lora_lab/assets/tokenizer   # rebuild the shipped tokenizer
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOKENIZER_DIR = ASSETS / "tokenizer"

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# The assistant's turn, its closing <|end|> included, is what SFT trains on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path):
    """Train a byte-level BPE on `texts` and save it as a PreTrainedTokenizerFast in out_dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def corpus_texts(n: int = 20000, seed: int = 0) -> list[str]:
    from lora_lab.tiny.world import tiny_tulu_rows

    return ["\n".join(m["content"] for m in row["messages"]) for row in tiny_tulu_rows(n, seed)]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0]) if argv else TOKENIZER_DIR
    fast = train_tokenizer(corpus_texts(), vocab_size=2048, out_dir=out)
    print(f"wrote {out} (vocab {len(fast)})")


if __name__ == "__main__":
    main()
