"""The token cache under run.root (lora_lab/token_cache.py, data.load_data): reused, keyed by what
changes the tokens, written atomically, numeric arrays only, rebuilt when damaged."""

from pathlib import Path

import numpy as np
import pytest

from lora_lab import data as data_mod
from lora_lab import token_cache
from lora_lab.config import compose
from lora_lab.data import load_data, load_rows, use_chat_template
from lora_lab.models import load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def cfg_of(tmp_path):
    def make(*overrides: str):
        return compose(["data.num_examples=40", "data.eval_size=8", "data.max_seq_len=48", "optim.batch_size=4",
                        f"run.root={tmp_path / 'runs'}", *overrides])

    return make


@pytest.fixture
def tokenizations(monkeypatch):
    """How many splits were tokenized (not read from the cache)."""
    calls = []
    real = data_mod._tokenize

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_mod, "_tokenize", counting)
    return calls


def load(cfg):
    tok = use_chat_template(load_tokenizer(cfg.model.name), cfg.data)
    return load_data(cfg, tok, load_rows(cfg.data))


def same(a, b) -> bool:
    return all(len(x) == len(y) and all(u.equal(v) for u, v in zip(x.ids, y.ids)) and all(u.equal(v) for u, v in zip(x.labels, y.labels))
               for x, y in zip(a, b))


def cache_files(cfg) -> list[Path]:
    return sorted((Path(cfg.run.root) / token_cache.CACHE_DIR).glob("*.npz"))


def test_the_second_load_reads_the_cache_and_gives_the_same_tensors(cfg_of, tokenizations, capsys):
    cfg = cfg_of()
    first = load(cfg)
    assert len(tokenizations) == 2 and len(cache_files(cfg)) == 1
    again = load(cfg_of("method=full", "optim.lr=1e-4"))  # another run of the grid: same data, same tokens
    assert len(tokenizations) == 2 and same(first, again)
    assert "from the token cache" in capsys.readouterr().err
    uncached = load(cfg_of("run.token_cache=false"))
    assert len(tokenizations) == 4 and same(first, uncached)
    assert first[0].ids[0].dtype == uncached[0].ids[0].dtype and first[0].labels[0].dtype == uncached[0].labels[0].dtype


def test_the_cache_holds_only_numeric_arrays_and_no_temporary_files(cfg_of):
    cfg = cfg_of()
    load(cfg)
    (path,) = cache_files(cfg)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.lock"]
    with np.load(path, allow_pickle=False) as f:
        assert all(f[name].dtype.kind in "iub" for name in f.files)


@pytest.mark.parametrize("change", ["data.max_seq_len=64", "data.chat_template=chatml", "data.truncation=drop",
                                    "data.seed=7", "model=tiny-moe"])
def test_what_changes_the_tokens_changes_the_cache_file(cfg_of, change):
    base, other = cfg_of(), cfg_of(change)
    load(base)
    load(other)
    assert len(cache_files(base)) == 2


def test_a_changed_data_file_is_not_read_from_an_old_cache(cfg_of, tmp_path, tokenizations):
    path = tmp_path / "gsm8k.jsonl"
    lines = (FIXTURES / "gsm8k.jsonl").read_text().splitlines(keepends=True)
    path.write_text("".join(lines))
    cfg = cfg_of("data=gsm8k", f"data.path={path}", "data.max_seq_len=512", "data.eval_size=4")
    load(cfg)
    path.write_text("".join(lines[:-1]))  # one row fewer
    load(cfg)
    assert len(tokenizations) == 4 and len(cache_files(cfg)) == 2


@pytest.mark.parametrize("damage", ["garbage", "half", "object array", "wrong key", "inconsistent"])
def test_a_damaged_cache_file_is_rebuilt_not_trusted(cfg_of, tokenizations, capsys, damage):
    cfg = cfg_of()
    first = load(cfg)
    (path,) = cache_files(cfg)
    whole = path.read_bytes()
    with np.load(path, allow_pickle=False) as f:
        arrays = {name: f[name] for name in f.files}
    key = arrays["key"].tobytes().decode()
    if damage == "garbage":
        path.write_bytes(b"\x00not a cache file")
    elif damage == "half":  # what a reader would see of a file written in place, were it not renamed
        path.write_bytes(whole[:len(whole) // 2])
    elif damage == "object array":
        np.savez(path, **{**arrays, "train_ids": np.array([object()], dtype=object)})
    elif damage == "wrong key":
        np.savez(path, **{**arrays, "key": np.frombuffer(b"0" * 64, dtype=np.uint8)})
    else:
        np.savez(path, **{**arrays, "train_lens": arrays["train_lens"] + 1})
    capsys.readouterr()
    again = load(cfg)
    assert len(tokenizations) == 4 and same(first, again)
    assert "rebuilding it" in capsys.readouterr().err
    assert token_cache.read(path, key) is not None  # rewritten whole
    load(cfg)
    assert len(tokenizations) == 4


def test_a_run_root_that_cannot_hold_the_cache_still_trains(cfg_of, tmp_path, capsys):
    root = tmp_path / "ro"
    root.mkdir()
    (root / ".cache").write_text("a file where the cache directory would go")
    train, held = load(cfg_of(f"run.root={root}"))
    assert len(train) == 40 and "not written" in capsys.readouterr().err
