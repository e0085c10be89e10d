"""How many single-digit table facts a tiny base model completes, greedy, from bare prompts:
all 100 pairs (a, b) in 0..9 for `a + b =`, `$ a + b =`, `$a + b =` and `a * b =`
(experiments/LOG.md, 2026-11-24: the plain-corpus tiny-llama vs the drill builds).

    python experiments/probe_tables.py                       # the shipped tiny-llama
    python experiments/probe_tables.py /tmp/assets_e/tiny-llama
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lora_lab.tiny.tokenizer import ASSETS

FORMS = ("{a} + {b} =", "$ {a} + {b} =", "${a} + {b} =", "{a} * {b} =")


@torch.no_grad()
def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(ASSETS / "tiny-llama")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    for form in FORMS:
        right = 0
        for a in range(10):
            for b in range(10):
                ids = tok(form.format(a=a, b=b), return_tensors="pt").input_ids
                out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
                words = tok.decode(out[0, ids.shape[1]:]).split()
                got = "".join(ch for ch in words[0] if ch.isdigit()) if words else ""
                right += got == str(a * b if "*" in form else a + b)
        print(f"{form!r:<18} {right}/100")


if __name__ == "__main__":
    main()
