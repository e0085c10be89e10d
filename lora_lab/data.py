"""Post-training data: data set registry, real data set loaders, chat conversion, tokenization with
assistant-only labels, and the deterministic batch order shared by every run of a sweep.

A data set is a function `DataConfig -> (train_rows, eval_rows)`; rows are dicts in the schema of
the real data set they stand for. Generated sets live in tiny/world.py; the real ones load here
through `datasets.load_dataset`, from the hub (`data.hub_id`, `data.hub_config`, `data.split`) or
from local files (`data.path`: a .jsonl/.json/.parquet file or a directory of them):

    tulu3          allenai/tulu-3-sft-mixture       {"id", "messages": [{"role", "content"}], "source"}
    openthoughts3  open-thoughts/OpenThoughts3-1.2M {"conversations": [{"from": "human"|"gpt", "value"}], ...}
    math           DigitalLearningGmbH/MATH-lighteval {"problem", "solution" (with \\boxed), "level", "type"}
    gsm8k          openai/gsm8k (main)              {"question", "answer" (ending "#### <number>")}
    deepmath       zwhe99/DeepMath-103K             {"question", "final_answer", "difficulty", "topic", "r1_solution_1..3"}

Rows become chat messages by schema (the keys a row has), never by set name, so a generated set in
a real set's schema trains the same way. A real set is read lazily: a seeded permutation of row
indices, the first `eval_size` usable rows held out (unless `data.eval_split` names a split), the
next `num_examples` usable rows trained on; so the held-out rows never depend on num_examples.
Malformed rows are counted, reported on stderr and skipped; above `data.max_bad_fraction` the load
fails with a DataError. Truncation to `data.max_seq_len` keeps the head and drops the tail; a row
left with no assistant token is dropped and counted. Batches are drawn in an order that depends only
on `train.seed` and the data config, so LoRA and FullFT runs of one sweep see the same sequences at
the same step.

    python -m lora_lab.data                                    # a few tiny-tulu examples with their targets
    python -m lora_lab.data data=gsm8k data.path=tests/fixtures/gsm8k.jsonl
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch

from lora_lab import answers, hub
from lora_lab.tiny.world import TINY_DATASETS

if TYPE_CHECKING:
    from lora_lab.config import Config, DataConfig

IGNORE_INDEX = -100


class DataError(ValueError):
    """A data set that cannot be used as configured (not available offline, wrong schema, too many
    malformed rows, too few rows); the message is one line naming the key and the fix. Raised before
    the run directory is written or any model is loaded; the CLI exits 2, like a ConfigError."""


class BadRow(ValueError):
    """One malformed row; the message is a short reason ("no assistant turn")."""


# ----------------------------------------------------------------------------- rows -> chat messages

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if value is None:
        raise BadRow(f"no {key!r}")
    if not isinstance(value, str):
        raise BadRow(f"{key!r} is {type(value).__name__}, not a string")
    if not value.strip():
        raise BadRow(f"empty {key!r}")
    return value


def _turns(turns: Any, field: str, role_key: str, text_key: str) -> list[dict]:
    """messages ({role, content}) or ShareGPT conversations ({from, value}) -> messages."""
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"no {field!r}" if turns is None else f"{field!r} is not a non-empty list")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadRow(f"{field}[{i}] is not an object")
        role = _ROLES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise BadRow(f"{field}[{i}] has unknown {role_key} {turn.get(role_key)!r}")
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise BadRow(f"{field}[{i}].{text_key} is {type(text).__name__}, not a string")
        if not text.strip():
            if role == "system":  # an empty system prompt says nothing: drop the turn, keep the row
                continue
            raise BadRow(f"{field}[{i}] ({role}) has empty {text_key}")
        out.append({"role": role, "content": text})
    return out


def _qa(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _messages(row: dict) -> list[dict]:
    """The chat messages of one row, chosen by the keys it has (not by data set name):

    - messages (Tulu 3): as they are, empty system turns dropped;
    - conversations (OpenThoughts3, ShareGPT): human -> user, gpt -> assistant, system -> system;
    - problem + solution (MATH): user problem, assistant solution (must contain \\boxed{...});
    - question + final_answer (DeepMath): user question, assistant r1_solution_1, or when it is
      absent a short answer "The final answer is $\\boxed{...}$.";
    - question + answer (GSM8K): user question, assistant answer with its "#### <number>" line kept
      (the answer format the model must learn).

    Raises BadRow for a malformed row: missing keys, wrong types, empty content, no assistant turn,
    a GSM8K answer without "#### <number>", a MATH solution without \\boxed."""
    if not isinstance(row, dict):
        raise BadRow(f"row is {type(row).__name__}, not an object")
    if "messages" in row:
        msgs = _turns(row["messages"], "messages", "role", "content")
    elif "conversations" in row:
        msgs = _turns(row["conversations"], "conversations", "from", "value")
    elif "problem" in row or "solution" in row:
        problem, solution = _text(row, "problem"), _text(row, "solution")
        if not answers.BOXED.search(solution):
            raise BadRow("'solution' has no \\boxed{...} answer")
        msgs = _qa(problem, solution)
    elif "final_answer" in row or "r1_solution_1" in row:
        question, final = _text(row, "question"), _text(row, "final_answer")
        r1 = row.get("r1_solution_1")
        if r1 is not None and not isinstance(r1, str):
            raise BadRow(f"'r1_solution_1' is {type(r1).__name__}, not a string")
        msgs = _qa(question, r1 if r1 and r1.strip() else f"The final answer is $\\boxed{{{final}}}$.")
    elif "question" in row or "answer" in row:
        question, answer = _text(row, "question"), _text(row, "answer")
        if not answers.GSM8K_FINAL.search(answer):
            raise BadRow("'answer' does not end with '#### <number>'")
        msgs = _qa(question, answer)
    else:
        raise BadRow(f"no known schema (keys {sorted(row)})")
    if not any(m["role"] == "assistant" for m in msgs):
        raise BadRow("no assistant turn")
    return msgs


def _level(row: dict) -> int | None:
    """MATH's "Level 3" -> 3 (None for "Level ?" or no level)."""
    m = re.fullmatch(r"Level (\d+)", str(row.get("level") or ""))
    return int(m.group(1)) if m else None


# ----------------------------------------------------------------------------- real data sets

# name -> the columns that identify its schema: a file in another schema is refused, not guessed at.
REAL_SETS: dict[str, tuple[str, ...]] = {
    "tulu3": ("messages",),
    "openthoughts3": ("conversations",),
    "math": ("problem", "solution"),
    "gsm8k": ("question", "answer"),
    "deepmath": ("question", "final_answer"),
}
_FILE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}
_CHUNK = 1024  # rows decoded per Arrow read


class Rows(Sequence):
    """Rows of an Arrow-backed data set at some indices: reads like a list of dicts but holds only
    the indices, so a subset of a 1M-row set costs its indices, not its text."""

    def __init__(self, ds: Any, indices: list[int]):
        self.ds, self.indices = ds, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Rows(self.ds, self.indices[i])
        return self.ds[int(self.indices[i])]

    def __iter__(self) -> Iterator[dict]:
        for start in range(0, len(self.indices), _CHUNK):
            yield from self.ds.select(self.indices[start:start + _CHUNK])


@dataclass
class _Tally:
    """Malformed rows met while reading a set: reported on stderr, fatal above a fraction."""

    name: str
    seen: int = 0
    bad: int = 0
    first: str = ""

    def add_bad(self, where: str, why: BadRow) -> None:
        self.bad += 1
        self.first = self.first or f"{where}: {why}"

    def check(self, max_fraction: float) -> None:
        if not self.bad:
            return
        if self.bad > max_fraction * self.seen:
            raise DataError(f"data.{self.name}: {self.bad} of {self.seen} rows are malformed, more than "
                            f"data.max_bad_fraction={max_fraction} (first: {self.first}); fix the data or raise data.max_bad_fraction")
        print(f"data.{self.name}: skipped {self.bad} of {self.seen} malformed rows (first: {self.first})", file=sys.stderr)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _where(cfg: "DataConfig") -> str:
    return f"data.path={cfg.path}" if cfg.path else f"{cfg.hub_id}" + (f" ({cfg.hub_config})" if cfg.hub_config else "")


def _offline_message(cfg: "DataConfig") -> str:
    return (f"data={cfg.name}: {_where(cfg)} is not available offline (no network, not in the datasets cache); "
            f"on a machine with network run `hf download --repo-type dataset {cfg.hub_id} --local-dir <dir>` "
            f"and set data.path=<dir>, or set data.path=<local jsonl/parquet in the same schema>")


def _open_hub(cfg: "DataConfig", split: str, key: str) -> Any:
    import datasets

    offline = hub.offline()
    try:
        with hub.offline_flags(offline):
            return datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)
    except ValueError as exc:  # an unknown config or split name
        bad = f"{key}={split!r}" if "split" in str(exc).lower() else f"data.hub_config={cfg.hub_config!r}"
        raise DataError(f"{bad}: {_first_line(exc)} ({cfg.hub_id})") from None
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one line with the way out
        if offline:
            raise DataError(_offline_message(cfg)) from None
        from datasets.exceptions import DatasetNotFoundError

        if isinstance(exc, DatasetNotFoundError):
            raise DataError(f"data.hub_id={cfg.hub_id!r}: {_first_line(exc)}") from None
        raise DataError(f"data={cfg.name}: cannot load {_where(cfg)} ({type(exc).__name__}: {_first_line(exc)}); "
                        f"retry, or set data.path=<local jsonl/parquet in the same schema>") from None


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """datasets logs a failed read on stderr ("Failed to load JSON from file ...") and draws progress
    bars, on top of the exception that the caller turns into its one line: silence both for one load."""
    import datasets

    verbosity, bars_off = datasets.logging.get_verbosity(), datasets.are_progress_bars_disabled()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_off:
            datasets.enable_progress_bars()


def _json_problem(path: Path) -> str | None:
    """The first thing that keeps a .jsonl/.json file from reading as rows, with its line number, or
    None. datasets says only "An error occurred while generating the dataset"."""
    data = path.read_bytes()
    if not data.strip():
        return "the file is empty" if not data else "the file holds only blank lines"
    if b"\0" in data:
        line = data[:data.index(b"\0")].count(b"\n") + 1
        return f"line {line} holds binary data (a NUL byte), not JSON text"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        return f"line {line} is not UTF-8 text (a binary file?)"
    if path.suffix == ".json" and text.lstrip().startswith("["):  # one JSON document: a list of rows
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"line {exc.lineno} is not valid JSON (column {exc.colno}: {exc.msg})"
        return None
    for number, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {number} is not valid JSON (column {exc.colno}: {exc.msg})"
        if not isinstance(row, dict):
            return f"line {number} is a JSON {type(row).__name__}, not an object (one row per line)"
    return None


def _file_problem(path: Path) -> str | None:
    """What is wrong with a local data file (or the first bad file of a directory), or None."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.suffix in _FILE_FORMATS and f.is_file())
    for f in files:
        if f.suffix == ".parquet":
            if not f.stat().st_size:
                why: str | None = "the file is empty"
            else:
                import pyarrow.parquet as pq

                try:
                    pq.read_metadata(f)
                    why = None
                except Exception as exc:  # noqa: BLE001 - pyarrow's errors have no common base worth naming
                    why = f"not a parquet file ({_first_line(exc)})"
        else:
            why = _json_problem(f)
        if why:
            return why if f == path else f"{f.relative_to(path)}: {why}"
    return None


def _bad_file(cfg: "DataConfig", problem: str) -> DataError:
    return DataError(f"data.path={cfg.path}: {problem}; fix the file, or point data.path at another")


def _open_local(cfg: "DataConfig", split: str, key: str) -> Any:
    """A file is one split (the training split); a directory reads like a hub repository: the
    configs of its README (an `hf download` snapshot; data.hub_config picks one), or else files
    named by split (train-*.parquet, test.jsonl), any other files being the train split."""
    import datasets

    path = Path(cfg.path).expanduser().resolve()
    if path.is_file():
        if path.suffix not in _FILE_FORMATS:
            raise DataError(f"data.path={cfg.path}: expected a .jsonl, .json or .parquet file, or a directory of them")
        if key == "data.eval_split":
            raise DataError(f"data.eval_split={split!r}: data.path is a single file, one split; set data.eval_split=null "
                            f"(hold out data.eval_size rows) or point data.path at a directory with {split} files")
        if not path.stat().st_size:  # datasets would say "StopIteration"
            raise DataError(f"data.path={cfg.path}: the file is empty; point data.path at a file with {cfg.name} rows")
        args, kwargs = (_FILE_FORMATS[path.suffix],), dict(data_files=str(path), split="train")
    else:
        readme = path / "README.md"
        has_configs = readme.is_file() and "config_name:" in readme.read_text(errors="replace")
        args, kwargs = (str(path), cfg.hub_config if has_configs else None), dict(split=split)
    try:
        with hub.offline_flags(True), _quiet_datasets():  # local files need no network: never wait on it
            return datasets.load_dataset(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - unreadable JSON, no data files, an unknown split, ...
        if isinstance(exc, ValueError) and "split" in str(exc).lower():
            raise DataError(f"{key}={split!r}: {_first_line(exc)}") from None
        problem = _file_problem(path)
        if problem:
            raise _bad_file(cfg, problem) from None
        if isinstance(exc, ValueError):
            raise DataError(f"data.path={cfg.path}: {_first_line(exc)}") from None
        cause = exc.__cause__ or exc  # DatasetGenerationError wraps the reader's own error
        raise DataError(f"data.path={cfg.path}: cannot read it ({type(cause).__name__}: {_first_line(cause)})") from None


def _open(cfg: "DataConfig", split: str, key: str) -> Any:
    """One split as a datasets.Dataset: memory-mapped Arrow, nothing read into Python yet."""
    ds = _open_local(cfg, split, key) if cfg.path else _open_hub(cfg, split, key)
    missing = [c for c in REAL_SETS[cfg.name] if c not in ds.column_names]
    if missing:
        raise DataError(f"data={cfg.name}: {_where(cfg)} has columns {ds.column_names}, not {cfg.name}'s schema "
                        f"(no {', '.join(missing)}); point data.path at {cfg.name} data or pick the data= preset of its schema")
    if cfg.levels and "level" not in ds.column_names:
        raise DataError(f"data.levels={cfg.levels}: {cfg.name} rows have no 'level' column; set data.levels=null")
    return ds


def _walk(ds: Any, order: np.ndarray, start: int, want: int | None, cfg: "DataConfig", tally: _Tally,
          split: str) -> tuple[list[int], int]:
    """The first `want` usable rows (all if None) of ds in `order` from position `start`, and the
    position after the last row looked at. Malformed rows go to the tally; rows outside
    data.levels are passed over."""
    keep, pos = [], start
    while pos < len(order) and (want is None or len(keep) < want):
        idx = order[pos:pos + _CHUNK]
        for i, row in zip(idx, ds.select(idx)):
            pos += 1
            tally.seen += 1
            try:
                _messages(row)
            except BadRow as why:
                tally.add_bad(f"{split} row {i}", why)
                continue
            if cfg.levels and _level(row) not in cfg.levels:
                continue
            keep.append(int(i))
            if want is not None and len(keep) == want:
                break
    return keep, pos


def load_real(cfg: "DataConfig") -> tuple[Rows, Rows]:
    """A real data set: a seeded training subset and held-out rows, both in the set's own schema.

    One seeded permutation of the training split; the first data.eval_size usable rows are held
    out (or drawn from data.eval_split), the next data.num_examples usable rows train (all if null,
    or if fewer are left: then a note on stderr). The held-out rows are fixed before the training
    rows are drawn, so num_examples never changes them, and a smaller num_examples trains on a
    prefix of a larger one."""
    train_ds = _open(cfg, cfg.split, "data.split")
    order = np.random.default_rng(cfg.seed).permutation(len(train_ds))
    tally = _Tally(cfg.name)
    try:
        if cfg.eval_split:
            eval_ds = _open(cfg, cfg.eval_split, "data.eval_split")
            eval_order = np.random.default_rng(cfg.seed).permutation(len(eval_ds))
            held, _ = _walk(eval_ds, eval_order, 0, cfg.eval_size, cfg, tally, cfg.eval_split)
            start = 0
        else:
            eval_ds = train_ds
            held, start = _walk(train_ds, order, 0, cfg.eval_size, cfg, tally, cfg.split)
        train, _ = _walk(train_ds, order, start, cfg.num_examples, cfg, tally, cfg.split)
    except UnicodeDecodeError:  # Arrow's JSON reader takes bytes that are not UTF-8; reading the row fails
        problem = _file_problem(Path(cfg.path).expanduser()) if cfg.path else None
        raise (_bad_file(cfg, problem) if problem else
               DataError(f"data={cfg.name}: {_where(cfg)} has text that is not UTF-8; fix the data")) from None
    tally.check(cfg.max_bad_fraction)
    if len(held) < cfg.eval_size:
        raise DataError(f"data.eval_size={cfg.eval_size}: {_where(cfg)} has only {len(held)} usable rows to hold out; lower it")
    if not train:
        raise DataError(f"data.eval_size={cfg.eval_size}: {_where(cfg)} has no usable rows left to train on; lower it")
    if cfg.num_examples and len(train) < cfg.num_examples:
        # A cap, not a demand: a preset's paper-scale size still runs on a small local file.
        print(f"data.{cfg.name}: data.num_examples={cfg.num_examples} but {_where(cfg)} has {len(train)} usable training rows "
              f"after the held-out ones; training on {len(train)}", file=sys.stderr)
    return Rows(train_ds, train), Rows(eval_ds, held)


# name -> loader(DataConfig) -> (train_rows, eval_rows), rows in the schema of the real set.
DATASETS: dict[str, Callable[["DataConfig"], tuple[Sequence[dict], Sequence[dict]]]] = {
    **TINY_DATASETS, **{name: load_real for name in REAL_SETS},
}


# ----------------------------------------------------------------------------- tokenization


def encode_chat(tokenizer, messages: list[dict], max_len: int | None) -> tuple[list[int], list[int]]:
    """Token ids and labels (IGNORE_INDEX outside assistant turns) of one conversation, cut to its
    first max_len tokens (None: not cut).

    Uses the template's {% generation %} blocks when it has them; otherwise marks each assistant
    turn by rendering the conversation before it (with the generation prompt) and after it, which
    is exact for prefix-stable templates and then also counts the turn's trailing separator."""
    if _has_generation_blocks(tokenizer):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    else:
        def render(msgs, gen=False):
            return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=gen)["input_ids"])

        ids, mask = [], []
        for i, m in enumerate(messages):
            full = render(messages[: i + 1])
            if full[: len(ids)] != ids:
                # A template that rewrites earlier turns once a later one follows (Qwen3's drops an
                # assistant turn's empty <think> block): the masks of this method would be shifted.
                raise DataError("data.chat_template: the chat template rewrites earlier turns (the first turns "
                                "rendered alone are not a prefix of the whole), so assistant tokens cannot be "
                                "found without {% generation %} markers; set data.chat_template=chatml, llama3 "
                                "or a .jinja file with {% generation %} blocks")
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


CHAT_TEMPLATE_DIR = Path(__file__).resolve().parent / "assets" / "chat_templates"


def use_chat_template(tokenizer, data: "DataConfig") -> Any:
    """The tokenizer with the chat template data.chat_template names (a preset of
    lora_lab/assets/chat_templates/ or a .jinja file), or its own; a DataError naming
    data.chat_template when it has none (a base model's tokenizer), before any model loads."""
    if data.chat_template is not None:
        from lora_lab.config import CHAT_TEMPLATES

        path = (CHAT_TEMPLATE_DIR / f"{data.chat_template}.jinja" if data.chat_template in CHAT_TEMPLATES
                else Path(data.chat_template).expanduser())
        tokenizer.chat_template = path.read_text()
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"data.chat_template=null: the tokenizer of {getattr(tokenizer, 'name_or_path', 'this model')} "
                        f"has no chat template (a base model); set data.chat_template=llama3, chatml or a .jinja file")
    return tokenizer


def _has_generation_blocks(tokenizer) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "{% generation %}" in template or "{%- generation %}" in template


def encode_chats(tokenizer, conversations: Sequence[list[dict]], chunk: int = 256) -> list[tuple[list[int], list[int]]]:
    """encode_chat (not cut) of many conversations. With {% generation %} blocks the tokenizer runs
    on chunks of conversations at once (same ids and masks as one at a time, in 0.62x the time on
    tiny-tulu: experiments/bench_tokenize.py); otherwise one conversation at a time."""
    if not _has_generation_blocks(tokenizer):
        return [encode_chat(tokenizer, m, None) for m in conversations]
    out = []
    for i in range(0, len(conversations), chunk):
        enc = tokenizer.apply_chat_template(list(conversations[i:i + chunk]), tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        for ids, mask in zip(enc["input_ids"], enc["assistant_masks"]):
            out.append((list(ids), [t if k else IGNORE_INDEX for t, k in zip(ids, mask)]))
    return out


@dataclass
class TokenizedSplit:
    ids: list[torch.Tensor]
    labels: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)


def tokenize(rows: Sequence[dict], tokenizer, max_len: int, label: str = "data") -> TokenizedSplit:
    """Rows -> token ids and assistant-only labels. Truncation policy: keep the first max_len tokens
    and drop the tail, as SFT recipes do: the prompt survives whole where it fits, a long answer
    loses its end. A row left with no assistant token after position 0 (the next-token loss has no
    target) is dropped. Both counts go to stderr, prefixed by `label`."""
    ids, labels = [], []
    cut = dropped = 0
    for full_ids, full_labels in encode_chats(tokenizer, [_messages(row) for row in rows]):
        i, l = full_ids[:max_len], full_labels[:max_len]
        cut += len(full_ids) > max_len
        if sum(x != IGNORE_INDEX for x in l[1:]) == 0:
            dropped += 1
            continue
        ids.append(torch.tensor(i, dtype=torch.long))
        labels.append(torch.tensor(l, dtype=torch.long))
    if cut:
        gone = f"; dropped {dropped} left with no assistant token" if dropped else ""
        print(f"{label}: truncated {cut} of {len(ids) + dropped} rows to data.max_seq_len={max_len} tokens (tail dropped){gone}",
              file=sys.stderr)
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
            raise ValueError(f"optim.batch_size={batch_size} is larger than the {n} training examples; lower it or raise data.num_examples")
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


def load_rows(data: "DataConfig") -> tuple[Sequence[dict], Sequence[dict]]:
    """Training and held-out rows of the configured set; raises DataError (one line) when it cannot
    be used. Cheap enough to run before any model is loaded."""
    return DATASETS[data.name](data)


def _seq_len_error(cfg: "Config", what: str) -> DataError:
    n = cfg.data.max_seq_len
    return DataError(f"data.max_seq_len={n}: no {what} row of {cfg.data.name} has an assistant token within its first {n} tokens; raise it")


def _has_target(row: dict, tokenizer, max_len: int) -> bool:
    """Whether the row keeps a target token within its first max_len tokens, as tokenize() cuts it."""
    _, labels = encode_chat(tokenizer, _messages(row), max_len)
    return any(x != IGNORE_INDEX for x in labels[1:])


def _prompt_fits(row: dict, tokenizer, cfg: "Config") -> bool:
    """Whether the RL prompt of a row (the conversation before its last assistant turn, with
    rl.instruction and the generation prompt: what lora_lab/rl.py encode_prompt builds) fits in
    data.max_seq_len, as the RL loop requires of its held-out prompts."""
    msgs = _messages(row)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    msgs = [dict(m) for m in msgs[:last]]
    if cfg.rl.instruction:
        msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{cfg.rl.instruction}"
    ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    return len(ids) <= cfg.data.max_seq_len


def check_rows(cfg: "Config", rows: tuple[Sequence[dict], Sequence[dict]], tokenizer: Any = None) -> None:
    """Checks of a run's rows once they are read and before the model loads (lora_lab/launch.py),
    each a DataError naming the key:

    - one step's batch fits in the training rows: optim.batch_size sequences (task=rl:
      rl.prompts_per_step problems). A real set may hold fewer rows than data.num_examples, or all
      of a file (num_examples null), so only the rows read can tell;
    - data.max_seq_len leaves some training row and some held-out row a target (task=rl: some
      held-out prompt fits). The loop would find out only after building the model.

    The second needs the model's tokenizer (loaded here if not given), not its weights. It stops at
    the first row that passes: one row of each split in a usable config."""
    train_rows, eval_rows = rows
    key, need = ("rl.prompts_per_step", cfg.rl.prompts_per_step) if cfg.task == "rl" else ("optim.batch_size", cfg.optim.batch_size)
    if len(train_rows) < need:
        where = _where(cfg.data) if cfg.data.name in REAL_SETS else f"data={cfg.data.name}"
        raise DataError(f"{key}={need}: {where} has {len(train_rows)} usable training rows, fewer than one step takes; "
                        f"lower {key}, or train on more rows")
    if tokenizer is None:
        from lora_lab.models import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision)
    use_chat_template(tokenizer, cfg.data)
    n = cfg.data.max_seq_len
    if cfg.task == "rl":
        if not any(_prompt_fits(row, tokenizer, cfg) for row in eval_rows):
            raise DataError(f"data.max_seq_len={n}: every held-out prompt of {cfg.data.name} is longer than {n} tokens; raise it")
        return
    for split, what in ((train_rows, "training"), (eval_rows, "held-out")):
        if not any(_has_target(row, tokenizer, n) for row in split):
            raise _seq_len_error(cfg, what)


def load_data(cfg: "Config", tokenizer, rows: tuple[Sequence[dict], Sequence[dict]] | None = None
              ) -> tuple[TokenizedSplit, TokenizedSplit]:
    train_rows, eval_rows = rows if rows is not None else load_rows(cfg.data)
    name, n = cfg.data.name, cfg.data.max_seq_len
    train, held = tokenize(train_rows, tokenizer, n, f"data.{name} train"), tokenize(eval_rows, tokenizer, n, f"data.{name} eval")
    for split, what in ((train, "training"), (held, "held-out")):
        if not len(split):
            raise _seq_len_error(cfg, what)
    if cfg.task != "rl" and len(train) < cfg.optim.batch_size:
        # Rows left with no target after truncation are dropped: check_rows counted them still.
        raise DataError(f"optim.batch_size={cfg.optim.batch_size}: only {len(train)} training rows of {name} keep an "
                        f"assistant token within data.max_seq_len={n} tokens; lower it, or raise data.max_seq_len")
    return train, held


if __name__ == "__main__":
    from lora_lab.config import compose
    from lora_lab.models import load_tokenizer

    data = compose(sys.argv[1:]).data
    tok = load_tokenizer("tiny-llama")
    train_rows, _ = load_rows(data)
    for row in list(train_rows[:3]):
        ids, labels = encode_chat(tok, _messages(row), data.max_seq_len)
        print(repr(tok.decode(ids)))
        print("  target:", repr(tok.decode([t for t in labels if t != IGNORE_INDEX])))
