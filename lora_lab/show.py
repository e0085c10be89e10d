"""`lora-lab show-data`: the first training rows of a config as training sees them, targets marked.

    lora-lab show-data                                                  # three tiny-tulu rows
    lora-lab show-data data=gsm8k data.path=tests/fixtures/gsm8k.jsonl --rows 5
    lora-lab show-data model=qwen3-8b-base data=tulu3 data.max_seq_len=512 --json
    lora-lab show-data task=rl data=tiny-math                           # RL prompts (no targets)

Data only, no model: the rows are read as `lora-lab train` reads them and tokenized by the model's
tokenizer with its chat template (data.chat_template), assistant masks (lora_lab/chat.py) and
data.max_seq_len under data.truncation (lora_lab/data.py). Bad overrides, or data or a tokenizer
that cannot be had, stop with exit code 2 and one line.
"""

from __future__ import annotations

import json
import sys
from typing import Any

OPEN, CLOSE = "\u27e6", "\u27e7"  # ⟦ ⟧ around each target span; plain characters, so pipes and files keep them

USAGE = f"""usage: lora-lab show-data [key=value ...] [--rows N] [--json]

The first N training rows (default 3) of the config's data set, rendered with the model's chat
template and tokenized as a run does it, without building the model. Each row prints as a line of
counts (tokens, target tokens, whether it was cut to data.max_seq_len or does not train under
data.truncation) and its text, every target span (the tokens the SFT loss counts) inside
{OPEN} {CLOSE}. task=rl shows the RL prompts instead (no targets).

  --rows N   how many rows (from the first training row, in the order the data set holds them)
  --json     a JSON list instead: per row {{"row", "text", "targets", "tokens", "target_tokens",
             "truncated", "trains", "dropped"}}; text is the decoded row, targets the decoded target
             spans in order
Hydra overrides as for `lora-lab train` (model=, data=, data.path=, data.chat_template=, ...).
"""


def _args(argv: list[str]) -> tuple[int, bool, list[str]]:
    from lora_lab.config import ConfigError

    n, as_json, rest, it = 3, False, [], iter(argv)
    for arg in it:
        if arg == "--json":
            as_json = True
        elif arg == "--rows" or arg.startswith("--rows="):
            value = arg.partition("=")[2] if "=" in arg else next(it, "")
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"--rows={value}: must be a whole number >= 1")
            n = int(value)
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: unknown option; see lora-lab show-data --help")
        else:
            rest.append(arg)
    return n, as_json, rest


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    """(start, end) of each run of target positions."""
    from lora_lab.data import IGNORE_INDEX

    out: list[tuple[int, int]] = []
    for i, t in enumerate(labels):
        if t == IGNORE_INDEX:
            continue
        if out and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1)
        else:
            out.append((i, i + 1))
    return out


def _marked(tok: Any, ids: list[int], spans: list[tuple[int, int]]) -> str:
    parts, at = [], 0
    for a, b in spans:
        parts += [tok.decode(ids[at:a]), OPEN + tok.decode(ids[a:b]) + CLOSE]
        at = b
    return "".join(parts + [tok.decode(ids[at:])])


def _tokenizer(cfg: Any) -> Any:
    from lora_lab.config import ConfigError
    from lora_lab.data import use_chat_template
    from lora_lab.models import load_tokenizer

    try:
        tok = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision)
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"model.name={cfg.model.name!r}: cannot load its tokenizer ({first}); fetch it "
                          f"(`lora-lab fetch model.name={cfg.model.name}`) or give a local directory") from None
    return use_chat_template(tok, cfg.data)


def rows_shown(cfg: Any, n: int) -> list[dict]:
    """The first n training rows of cfg as show-data prints them (the --json objects)."""
    from lora_lab.data import encode_rows, rl_prompt_ids, run_rows

    train_rows = run_rows(cfg)[0]
    tok = _tokenizer(cfg)
    rows = [train_rows[i] for i in range(min(n, len(train_rows)))]
    out = []
    if cfg.task == "rl":
        for i, row in enumerate(rows):
            ids = rl_prompt_ids(row, tok, cfg.rl.instruction)
            fits = len(ids) <= cfg.data.max_seq_len
            out.append({"row": i, "text": tok.decode(ids), "targets": [], "tokens": len(ids), "target_tokens": 0,
                        "truncated": False, "trains": fits, "dropped": None if fits else "prompt longer than data.max_seq_len",
                        "marked": tok.decode(ids)})
        return out
    for i, r in enumerate(encode_rows(rows, tok, cfg.data.max_seq_len, cfg.data.truncation)):
        spans = _spans(r.labels)
        out.append({"row": i, "text": tok.decode(r.ids), "targets": [tok.decode(r.ids[a:b]) for a, b in spans],
                    "tokens": r.length, "target_tokens": r.targets, "truncated": r.truncated, "trains": r.dropped is None,
                    "dropped": r.dropped, "marked": _marked(tok, r.ids, spans)})
    return out


def show_data_main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    from lora_lab.config import compose

    n, as_json, overrides = _args(argv)
    cfg = compose(overrides)
    shown = rows_shown(cfg, n)
    if as_json:
        print(json.dumps([{k: v for k, v in row.items() if k != "marked"} for row in shown], indent=1, ensure_ascii=False))
        return 0
    d = cfg.data
    what = "RL prompts" if cfg.task == "rl" else f"training rows, targets in {OPEN} {CLOSE}"
    print(f"# data={d.name} model={cfg.model.name} data.max_seq_len={d.max_seq_len} data.truncation={d.truncation}: "
          f"the first {len(shown)} {what}")
    for row in shown:
        if cfg.task == "rl":
            counts = f"{row['tokens']} prompt tokens" + ("" if row["trains"] else f" (not used: {row['dropped']})")
        else:
            state = (f"not trained: {row['dropped']}" if row["dropped"] else
                     f"truncated to {d.max_seq_len}" if row["truncated"] else "whole")
            counts = f"{row['tokens']} tokens, {row['target_tokens']} target, {state}"
        print(f"\n## row {row['row']}: {counts}")
        print(row["marked"], end="" if row["marked"].endswith("\n") else "\n")
    sys.stdout.flush()
    return 0
