"""Time to tokenize a tiny-tulu training split with assistant masks: conversation by conversation
(data.encode_chat) vs in chunks (data.encode_chats, what data.tokenize uses). Alternating rounds
in one process, median (experiments/LOG.md, 2026-11-24).

    python experiments/bench_tokenize.py --rows 6400 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from lora_lab.data import encode_chat, encode_chats
from lora_lab.models import load_tokenizer
from lora_lab.tiny.world import tiny_tulu_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=6400)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    tok = load_tokenizer("tiny-llama")
    convs = [row["messages"] for row in tiny_tulu_rows(a.rows, 0)]
    one, chunked = [], []
    for _ in range(a.rounds):
        t = time.perf_counter()
        ref = [encode_chat(tok, c, None) for c in convs]
        one.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = encode_chats(tok, convs)
        chunked.append(time.perf_counter() - t)
        assert out == ref
    m1, m2 = statistics.median(one), statistics.median(chunked)
    print(f"{a.rows} rows: one at a time {m1:.2f} s, in chunks {m2:.2f} s, ratio {m2 / m1:.2f}")


if __name__ == "__main__":
    main()
