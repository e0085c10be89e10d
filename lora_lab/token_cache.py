"""The token cache: tokenized rows kept under the run root, so that every run, rank and requeue of a
sweep that reads the same data with the same tokenizer tokenizes it once.

A cache file is `<run.root>/.cache/tokens/<data set>-<key>.npz`: named numeric arrays only (numpy's
format without pickling, read with `allow_pickle=False`), so reading one executes nothing, and a
shared run root may hold files written by others. The key is a hash of everything that changes the
tokens (lora_lab/data.py `cache_parts`: the tokenizer's vocabulary, normalisation and chat template,
the data config, the rows read, the versions of the libraries that render and tokenize). A file is
written to a temporary name and renamed into place, so a reader sees a whole file or none; one that
does not read back as the arrays it should hold is ignored (and rebuilt), never trusted. While one
process builds a file the others that want it wait on a lock (`<file>.lock`, flock), then read it.
`run.token_cache=false` turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, Iterator

import numpy as np

# Part of every key: raise it when what is cached or how it is computed changes (2: the UTF-8 bytes
# of each row's targets).
VERSION = 2
CACHE_DIR = Path(".cache") / "tokens"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the token ids and masks of a tokenizer: its whole definition
    (vocabulary, merges, normaliser, pre-tokenizer, added and special tokens) and its chat template."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary and added tokens
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    h.update(json.dumps([type(tokenizer).__name__, sorted((i, str(t), bool(getattr(t, "special", False))) for i, t in added.items()),
                         tokenizer.chat_template or "", getattr(tokenizer, "bos_token", None),
                         getattr(tokenizer, "eos_token", None)], default=str).encode())
    return h.hexdigest()


def key_of(parts: dict) -> str:
    return hashlib.sha256(json.dumps({"version": VERSION, **parts}, sort_keys=True, default=str).encode()).hexdigest()


def path_for(root: str | Path, name: str, key: str) -> Path:
    return Path(root) / CACHE_DIR / f"{name}-{key[:24]}.npz"


def read(path: Path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file written under `key`, or None if there is none or it is damaged
    (a note on stderr then: it will be rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
        if bytes(arrays.pop("key").tobytes()).decode() != key:
            raise ValueError("written under another key")
        if any(a.dtype.kind not in "iub" for a in arrays.values()):
            raise ValueError("holds non-integer arrays")
        return arrays
    except Exception as exc:  # noqa: BLE001 - a truncated zip, a bad header, a missing array: all mean rebuild
        print(f"token cache {path}: unreadable ({type(exc).__name__}: {exc}); rebuilding it", file=sys.stderr)
        return None


def write(path: Path, key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file in the same directory, flushed, then renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # readable as the umask allows: a shared root
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.frombuffer(key.encode(), dtype=np.uint8), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def locked(path: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `<path>.lock` (None, or where no lock can be had: no lock). A
    process that dies releases it."""
    fd = None
    if path is not None:
        try:
            import fcntl

            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(f"{path}.lock", os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
            fcntl.flock(fd, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no fcntl, an unwritable root, NFS without locks: at worst two builders
            pass
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
