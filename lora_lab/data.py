"""Post-training data: data set registry, real data set loaders, chat conversion, tokenization with
assistant-only labels (lora_lab/chat.py finds them), truncation, the token cache, and the
deterministic batch order shared by every run of a sweep.

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
fails with a DataError. Rows longer than `data.max_seq_len` keep their head (`data.truncation=head`;
a row left with no assistant token does not train) or do not train (`drop`); both are counted on
stderr. Tokenized rows are cached under run.root (lora_lab/token_cache.py). Batches are drawn in an
order that depends only on `train.seed` and the data config, so LoRA and FullFT runs of one sweep
see the same sequences at the same step.

    lora-lab show-data                                         # a few tiny-tulu rows with their targets marked
    lora-lab show-data data=gsm8k data.path=tests/fixtures/gsm8k.jsonl --json
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

from lora_lab import answers, hub, token_cache
from lora_lab.chat import CHAT_TEMPLATE_DIR, IGNORE_INDEX, encode_chat, encode_chats, use_chat_template  # noqa: F401 - re-exported
from lora_lab.tiny.facts import load_unseen_facts
from lora_lab.tiny.maths import load_tiny_math
from lora_lab.tiny.world import TINY_DATASETS

if TYPE_CHECKING:
    from lora_lab.config import Config, DataConfig


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


def load_real(cfg: "DataConfig", val_size: int = 0) -> tuple[Rows, ...]:
    """A real data set: a seeded training subset and held-out rows, both in the set's own schema;
    with val_size (RL's rl.val_size) a third split, validation rows.

    One seeded permutation of the training split; the first data.eval_size usable rows are held
    out (or drawn from data.eval_split), the next val_size usable rows of the same walk are the
    validation rows, the next data.num_examples usable rows train (all if null, or if fewer are
    left: then a note on stderr). The held-out rows are fixed before the others are drawn, so
    neither val_size nor num_examples changes them, and a smaller num_examples trains on a prefix of
    a larger one."""
    train_ds = _open(cfg, cfg.split, "data.split")
    order = np.random.default_rng(cfg.seed).permutation(len(train_ds))
    tally = _Tally(cfg.name)
    try:
        if cfg.eval_split:
            eval_ds = _open(cfg, cfg.eval_split, "data.eval_split")
            eval_order = np.random.default_rng(cfg.seed).permutation(len(eval_ds))
            held, pos = _walk(eval_ds, eval_order, 0, cfg.eval_size, cfg, tally, cfg.eval_split)
            val, _ = _walk(eval_ds, eval_order, pos, val_size, cfg, tally, cfg.eval_split) if val_size else ([], pos)
            start = 0
        else:
            eval_ds = train_ds
            held, start = _walk(train_ds, order, 0, cfg.eval_size, cfg, tally, cfg.split)
            val, start = _walk(train_ds, order, start, val_size, cfg, tally, cfg.split) if val_size else ([], start)
        train, _ = _walk(train_ds, order, start, cfg.num_examples, cfg, tally, cfg.split)
    except UnicodeDecodeError:  # Arrow's JSON reader takes bytes that are not UTF-8; reading the row fails
        problem = _file_problem(Path(cfg.path).expanduser()) if cfg.path else None
        raise (_bad_file(cfg, problem) if problem else
               DataError(f"data={cfg.name}: {_where(cfg)} has text that is not UTF-8; fix the data")) from None
    tally.check(cfg.max_bad_fraction)
    if len(held) < cfg.eval_size:
        raise DataError(f"data.eval_size={cfg.eval_size}: {_where(cfg)} has only {len(held)} usable rows to hold out; lower it")
    if len(val) < val_size:
        raise DataError(f"rl.val_size={val_size}: {_where(cfg)} has only {len(val)} usable rows to hold out for validation "
                        f"after the data.eval_size={cfg.eval_size} test rows; lower it")
    if not train:
        held_out = f"data.eval_size={cfg.eval_size}" + (f" and rl.val_size={val_size}" if val_size else "")
        raise DataError(f"{held_out}: {_where(cfg)} has no usable rows left to train on; lower {'them' if val_size else 'it'}")
    if cfg.num_examples and len(train) < cfg.num_examples:
        # A cap, not a demand: a preset's paper-scale size still runs on a small local file.
        print(f"data.{cfg.name}: data.num_examples={cfg.num_examples} but {_where(cfg)} has {len(train)} usable training rows "
              f"after the held-out ones; training on {len(train)}", file=sys.stderr)
    if val_size:
        return Rows(train_ds, train), Rows(eval_ds, held), Rows(eval_ds, val)
    return Rows(train_ds, train), Rows(eval_ds, held)


# name -> loader(DataConfig) -> (train_rows, eval_rows), rows in the schema of the real set.
DATASETS: dict[str, Callable[["DataConfig"], tuple[Sequence[dict], Sequence[dict]]]] = {
    **TINY_DATASETS, **{name: load_real for name in REAL_SETS},
}
# name -> loader(DataConfig, val_size) -> (train_rows, eval_rows, val_rows): the sets RL trains on
# (a verifiable reward), which can hold out validation problems besides the test ones (rl.val_size).
VALIDATION_DATASETS: dict[str, Callable[["DataConfig", int], tuple[Sequence[dict], ...]]] = {
    "tiny-math": load_tiny_math, **{name: load_real for name in REAL_SETS},
}


# ----------------------------------------------------------------------------- tokenization


@dataclass
class RowTokens:
    """One row as training sees it: its ids and labels after the truncation policy, its length
    before, and why it does not train (None: it does)."""

    ids: list[int]
    labels: list[int]
    length: int
    dropped: str | None = None

    @property
    def truncated(self) -> bool:
        return self.length > len(self.ids)

    @property
    def targets(self) -> int:
        """Target tokens that the next-token loss counts (a target at position 0 has no context)."""
        return sum(x != IGNORE_INDEX for x in self.labels[1:])

    def target_bytes(self, table: np.ndarray) -> int:
        """UTF-8 bytes of the text that the targets the loss counts decode to, from `token_bytes`."""
        y = np.asarray(self.labels[1:], dtype=np.int64)
        return int(table[y[y != IGNORE_INDEX]].sum())


TOO_LONG, NO_TARGET = "longer than data.max_seq_len", "no assistant token within data.max_seq_len"


def encode_rows(rows: Sequence[dict], tokenizer, max_len: int, truncation: str = "head") -> list[RowTokens]:
    """Rows -> RowTokens under a truncation policy (data.truncation):

    - head: keep the first max_len tokens, drop the tail (SFT recipes' usual cut): the prompt
      survives whole where it fits, a long answer loses its end, final answer and end-of-turn token
      included; a row left with no target after position 0 does not train;
    - drop: a row longer than max_len does not train; every row that does is whole."""
    out = []
    for ids, labels in encode_chats(tokenizer, [_messages(row) for row in rows]):
        if truncation == "drop" and len(ids) > max_len:
            out.append(RowTokens(ids, labels, len(ids), TOO_LONG))  # whole, for show-data; never trained
            continue
        r = RowTokens(ids[:max_len], labels[:max_len], len(ids))
        if not r.targets:
            r.dropped = NO_TARGET
        out.append(r)
    return out


@dataclass
class TokenizedSplit:
    """The rows of a split that train: token ids, labels (IGNORE_INDEX off the targets) and the UTF-8
    bytes of each row's targets (bits per byte, lora_lab/train.py)."""

    ids: list[torch.Tensor]
    labels: list[torch.Tensor]
    target_bytes: list[int]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class _Counts:
    """What a truncation policy did to one split: rows tokenized, cut to max_len, not trained."""

    rows: int = 0
    cut: int = 0
    too_long: int = 0
    no_target: int = 0

    def note(self, label: str, max_len: int) -> str | None:
        if self.too_long:
            return (f"{label}: dropped {self.too_long} of {self.rows} rows longer than data.max_seq_len={max_len} tokens "
                    f"(data.truncation=drop)")
        if self.cut:
            gone = f"; dropped {self.no_target} left with no assistant token" if self.no_target else ""
            return f"{label}: truncated {self.cut} of {self.rows} rows to data.max_seq_len={max_len} tokens (tail dropped){gone}"
        return None


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def _decoder_types(tokenizer) -> set[str]:
    """The types of a fast tokenizer's decoder and of the decoders it chains (empty for a slow one)."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    found, todo = set(), [json.loads(decoder.__getstate__()) if decoder is not None else None]
    while todo:
        d = todo.pop()
        if isinstance(d, dict):
            found.add(d.get("type"))
            todo += d.get("decoders") or []
    return found


def token_bytes(tokenizer) -> np.ndarray:
    """UTF-8 bytes of text that each token id decodes to, indexed by id, so that the bytes of a row's
    targets are a sum over its target tokens, also where one character spans several tokens.
    Special tokens (bos, end of turn, padding) stand for no text: 0. Byte-level BPE (Llama 3, Qwen,
    the tiny tokenizer): one byte per character of the token's string; SentencePiece-style ('▁' for
    a space, '<0xNN>' for one byte): as they decode within a text; others: the token decoded alone."""
    vocab = tokenizer.get_vocab()
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if getattr(t, "special", False)}
    kinds = _decoder_types(tokenizer)
    pieces = "ByteLevel" not in kinds and bool(kinds & {"Metaspace", "ByteFallback", "Replace"})
    out = np.zeros(max(len(tokenizer), max(vocab.values(), default=-1) + 1), dtype=np.int64)
    for text, i in vocab.items():
        if pieces and _BYTE_TOKEN.fullmatch(text):  # byte fallback, special or not
            out[i] = 1
        elif i in special:
            continue
        elif i in added:
            out[i] = len(str(getattr(added[i], "content", added[i])).encode())
        elif "ByteLevel" in kinds:
            out[i] = len(text)
        elif pieces:
            out[i] = len(text.replace("\u2581", " ").encode())
        else:
            out[i] = len(tokenizer.decode([i], clean_up_tokenization_spaces=False).encode())
    return out


def _tokenize(rows: Sequence[dict], tokenizer, max_len: int, truncation: str,
              table: np.ndarray | None = None) -> tuple[TokenizedSplit, _Counts]:
    split, counts = TokenizedSplit([], [], []), _Counts()
    table = token_bytes(tokenizer) if table is None else table
    for r in encode_rows(rows, tokenizer, max_len, truncation):
        counts.rows += 1
        counts.cut += r.truncated and r.dropped != TOO_LONG
        counts.too_long += r.dropped == TOO_LONG
        counts.no_target += r.dropped == NO_TARGET
        if r.dropped is None:
            split.ids.append(torch.tensor(r.ids, dtype=torch.long))
            split.labels.append(torch.tensor(r.labels, dtype=torch.long))
            split.target_bytes.append(r.target_bytes(table))
    return split, counts


def tokenize(rows: Sequence[dict], tokenizer, max_len: int, label: str = "data", truncation: str = "head") -> TokenizedSplit:
    """Rows -> token ids and assistant-only labels of the rows that train under the truncation
    policy (encode_rows); what the policy cut or dropped goes to stderr, prefixed by `label`."""
    split, counts = _tokenize(rows, tokenizer, max_len, truncation)
    note = counts.note(label, max_len)
    if note:
        print(note, file=sys.stderr)
    return split


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


# ----------------------------------------------------------------------------- the token cache


def cache_parts(cfg: "Config", tokenizer, train_rows: Sequence[dict], eval_rows: Sequence[dict]) -> dict:
    """Everything the tokens of a run's rows depend on (lora_lab/token_cache.py hashes it): the
    tokenizer (the model's name and revision, its definition and chat template), the data config,
    the rows themselves (a real set's Arrow fingerprint and the indices read; a generated set's rows)
    and the versions of the libraries that render and tokenize."""
    import jinja2
    import tokenizers
    import transformers

    def rows_id(rows: Sequence[dict]) -> str:
        if isinstance(rows, Rows):
            return f"{getattr(rows.ds, '_fingerprint', None)}:{hashlib.sha256(np.asarray(rows.indices, np.int64).tobytes()).hexdigest()}"
        return hashlib.sha256(json.dumps(list(rows), sort_keys=True, default=str).encode()).hexdigest()

    return {"model": cfg.model.name, "revision": cfg.model.revision, "tokenizer": token_cache.tokenizer_fingerprint(tokenizer),
            "data": {k: v for k, v in vars(cfg.data).items() if k not in EVAL_ONLY_KEYS},
            "train_rows": rows_id(train_rows), "eval_rows": rows_id(eval_rows),
            "versions": [transformers.__version__, tokenizers.__version__, jinja2.__version__]}


def _to_arrays(prefix: str, split: TokenizedSplit, counts: _Counts) -> dict[str, np.ndarray]:
    lens = np.array([len(x) for x in split.ids], dtype=np.int64)
    ids = torch.cat(split.ids).numpy() if len(split) else np.zeros(0, np.int64)
    labels = torch.cat(split.labels).numpy() if len(split) else np.zeros(0, np.int64)
    dtype = np.int32 if ids.size == 0 or ids.max() < 2**31 else np.int64
    return {f"{prefix}_ids": ids.astype(dtype), f"{prefix}_target": (labels != IGNORE_INDEX).astype(np.uint8),
            f"{prefix}_lens": lens, f"{prefix}_bytes": np.array(split.target_bytes, dtype=np.int64),
            f"{prefix}_counts": np.array([counts.rows, counts.cut, counts.too_long, counts.no_target], np.int64)}


def _from_arrays(prefix: str, a: dict[str, np.ndarray], max_len: int) -> tuple[TokenizedSplit, _Counts]:
    """The split back from its arrays; ValueError if they are not what _to_arrays wrote."""
    ids, target, lens, nbytes, counts = (a[f"{prefix}_{k}"] for k in ("ids", "target", "lens", "bytes", "counts"))
    if (ids.ndim != 1 or target.shape != ids.shape or lens.ndim != 1 or counts.shape != (4,) or int(lens.sum()) != ids.size
            or nbytes.shape != lens.shape or (nbytes.size and nbytes.min() < 0)
            or (lens.size and (lens.min() < 1 or lens.max() > max_len)) or (ids.size and ids.min() < 0)):
        raise ValueError(f"inconsistent {prefix} arrays")
    split, start = TokenizedSplit([], [], [int(b) for b in nbytes.tolist()]), 0
    for n in lens.tolist():
        x = torch.from_numpy(ids[start:start + n].astype(np.int64))
        split.ids.append(x)
        split.labels.append(torch.where(torch.from_numpy(target[start:start + n].astype(bool)), x, IGNORE_INDEX))
        start += n
    return split, _Counts(*(int(c) for c in counts))


# ----------------------------------------------------------------------------- batch order


# Data keys added after runs were made, at the value that reproduces those runs: left out of the
# order seed there, so that a run resumed across the change keeps its batch order (and a grid its
# runs' shared order). chat_template=null renders as before it existed; truncation=head cuts as before.
_ORDER_NEUTRAL = {"chat_template": None, "truncation": "head"}
# Data keys that add an eval split and nothing else: the batch order and the cached tokens of the
# training and held-out rows do not depend on them, so runs with and without one train the same.
EVAL_ONLY_KEYS = ("eval_unseen",)


def order_seed(cfg: "Config") -> int:
    """Seed of the data order: train.seed and the data config only (not method, rank or LR)."""
    data = {k: v for k, v in vars(cfg.data).items()
            if k not in EVAL_ONLY_KEYS and (k not in _ORDER_NEUTRAL or v != _ORDER_NEUTRAL[k])}
    key = json.dumps({"seed": cfg.train.seed, "data": data}, sort_keys=True, default=str)
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


def load_rows(data: "DataConfig", val_size: int = 0) -> tuple[Sequence[dict], ...]:
    """Training and held-out rows of the configured set, and with val_size (RL's rl.val_size) a third
    split: val_size validation rows, disjoint from both and drawn after the held-out rows (which stay
    what they are without it); raises DataError (one line) when it cannot be used. Cheap enough to
    run before any model is loaded."""
    if not val_size:
        return DATASETS[data.name](data)
    if data.name not in VALIDATION_DATASETS:
        raise DataError(f"rl.val_size={val_size}: data={data.name} has no validation split; set rl.val_size=0, or "
                        f"use one of {', '.join(VALIDATION_DATASETS)}")
    return VALIDATION_DATASETS[data.name](data, val_size)


def run_rows(cfg: "Config") -> tuple[Sequence[dict], ...]:
    """The rows a run of cfg reads: load_rows of its data set, with the validation split of an RL run
    (rl.val_size; none for SFT, whose rl.* keys are ignored)."""
    return load_rows(cfg.data, cfg.rl.val_size if cfg.task == "rl" else 0)


def _seq_len_error(cfg: "Config", what: str) -> DataError:
    n = cfg.data.max_seq_len
    if cfg.data.truncation == "drop":
        return DataError(f"data.truncation=drop: every {what} row of {cfg.data.name} is longer than data.max_seq_len={n} "
                         f"tokens; raise data.max_seq_len, or set data.truncation=head")
    return DataError(f"data.max_seq_len={n}: no {what} row of {cfg.data.name} has an assistant token within its first {n} tokens; raise it")


def _trains(row: dict, tokenizer, data: "DataConfig") -> bool:
    """Whether the row trains under data.max_seq_len and data.truncation, as tokenize() treats it."""
    return encode_rows([row], tokenizer, data.max_seq_len, data.truncation)[0].dropped is None


def _prompt_fits(row: dict, tokenizer, cfg: "Config") -> bool:
    """Whether the RL prompt of a row (the conversation before its last assistant turn, with
    rl.instruction and the generation prompt: what lora_lab/rl.py encode_prompt builds) fits in
    data.max_seq_len, as the RL loop requires of its held-out prompts."""
    return len(rl_prompt_ids(row, tokenizer, cfg.rl.instruction)) <= cfg.data.max_seq_len


def rl_prompt_ids(row: dict, tokenizer, instruction: str | None) -> list[int]:
    """The token ids of a row's RL prompt: the conversation before its last assistant turn, with
    `instruction` appended to its last user turn and the generation prompt on."""
    msgs = _messages(row)
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    msgs = [dict(m) for m in msgs[:last]]
    if instruction:
        msgs[-1]["content"] = f"{msgs[-1]['content']}\n\n{instruction}"
    return list(tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])


def check_rows(cfg: "Config", rows: tuple[Sequence[dict], ...], tokenizer: Any = None) -> None:
    """Checks of a run's rows once they are read and before the model loads (lora_lab/launch.py),
    each a DataError naming the key:

    - one step's batch fits in the training rows: optim.batch_size sequences (task=rl:
      rl.prompts_per_step problems). A real set may hold fewer rows than data.num_examples, or all
      of a file (num_examples null), so only the rows read can tell;
    - data.max_seq_len (under data.truncation) leaves some training row and some held-out row to
      train on (task=rl: some held-out prompt fits, and some validation prompt where `rows` has
      them, load_rows' third split). The loop would find out only after building the model.

    The second needs the model's tokenizer (loaded here if not given), not its weights. It stops at
    the first row that passes: one row of each split in a usable config."""
    train_rows, eval_rows, *val_rows = rows
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
        for split, what in ((eval_rows, "held-out"), *((v, "validation") for v in val_rows)):
            if not any(_prompt_fits(row, tokenizer, cfg) for row in split):
                raise DataError(f"data.max_seq_len={n}: every {what} prompt of {cfg.data.name} is longer than {n} tokens; raise it")
        return
    for split, what in ((train_rows, "training"), (eval_rows, "held-out")):
        if not any(_trains(row, tokenizer, cfg.data) for row in split):
            raise _seq_len_error(cfg, what)


def load_data(cfg: "Config", tokenizer, rows: tuple[Sequence[dict], Sequence[dict]] | None = None
              ) -> tuple[TokenizedSplit, TokenizedSplit]:
    """The training and held-out rows tokenized under data.max_seq_len and data.truncation, from the
    token cache under run.root when it holds them (lora_lab/token_cache.py; run.token_cache=false:
    never), else tokenized here and written to it. DataError if a split is left empty or the
    training rows cannot fill a batch."""
    train_rows, eval_rows = rows if rows is not None else load_rows(cfg.data)
    name, n, policy = cfg.data.name, cfg.data.max_seq_len, cfg.data.truncation
    labels = (f"data.{name} train", f"data.{name} eval")
    path = key = None
    if cfg.run.token_cache:
        key = token_cache.key_of(cache_parts(cfg, tokenizer, train_rows, eval_rows))
        path = token_cache.path_for(cfg.run.root, name, key)
    with token_cache.locked(path):  # a job that finds another building the same file waits for it
        arrays = token_cache.read(path, key) if path is not None else None
        try:
            (train, train_counts), (held, held_counts) = _from_arrays("train", arrays, n), _from_arrays("eval", arrays, n)
            print(f"data.{name}: {len(train)} training and {len(held)} held-out rows from the token cache {path}", file=sys.stderr)
        except (TypeError, KeyError, ValueError) as exc:  # no file (None), or arrays that do not fit together
            if arrays is not None:
                print(f"token cache {path}: unreadable ({exc}); rebuilding it", file=sys.stderr)
            table = token_bytes(tokenizer)
            (train, train_counts), (held, held_counts) = (_tokenize(r, tokenizer, n, policy, table) for r in (train_rows, eval_rows))
            if path is not None:
                try:
                    token_cache.write(path, key, {**_to_arrays("train", train, train_counts), **_to_arrays("eval", held, held_counts)})
                except OSError as err:  # a read-only or full run root: train on, uncached
                    print(f"token cache {path}: not written ({err})", file=sys.stderr)
    for counts, label in ((train_counts, labels[0]), (held_counts, labels[1])):
        note = counts.note(label, n)
        if note:
            print(note, file=sys.stderr)
    for split, what in ((train, "training"), (held, "held-out")):
        if not len(split):
            raise _seq_len_error(cfg, what)
    if cfg.task != "rl" and len(train) < cfg.optim.batch_size:
        # Rows that do not train after truncation are dropped: check_rows counted them still.
        raise DataError(f"optim.batch_size={cfg.optim.batch_size}: only {len(train)} training rows of {name} keep an "
                        f"assistant token within data.max_seq_len={n} tokens (data.truncation={policy}); lower it, "
                        f"or raise data.max_seq_len")
    return train, held


# name -> loader(DataConfig) -> the unseen-facts rows of data.eval_unseen (config.py allows the key on these sets).
UNSEEN_DATASETS: dict[str, Callable[["DataConfig"], list[dict]]] = {"tiny-facts": load_unseen_facts}


def load_unseen(cfg: "Config", tokenizer) -> TokenizedSplit | None:
    """The unseen-facts split of data.eval_unseen (None when it is off), tokenized under
    data.max_seq_len and data.truncation; DataError if none of its rows is left to evaluate."""
    if not cfg.data.eval_unseen:
        return None
    rows = UNSEEN_DATASETS[cfg.data.name](cfg.data)
    split = tokenize(rows, tokenizer, cfg.data.max_seq_len, f"data.{cfg.data.name} eval_unseen", cfg.data.truncation)
    if not len(split):
        raise _seq_len_error(cfg, "unseen-facts")
    return split


if __name__ == "__main__":  # `lora-lab show-data` (lora_lab/show.py) shows more: any model's tokenizer, JSON
    from lora_lab.config import compose
    from lora_lab.models import load_tokenizer

    data = compose(sys.argv[1:]).data
    tok = use_chat_template(load_tokenizer("tiny-llama"), data)
    for r in encode_rows(list(load_rows(data)[0][:3]), tok, data.max_seq_len, data.truncation):
        print(repr(tok.decode(r.ids)) if r.dropped is None else f"(not trained: {r.dropped})")
        print("  target:", repr(tok.decode([t for t in r.labels if t != IGNORE_INDEX])))
