"""Bits per UTF-8 byte of the targets beside nats per token (lora_lab/data.py token_bytes,
lora_lab/train.py, lora_lab/results.py), and the wandb run of a run directory: group, tags, grid
point and final losses, read back from wandb's offline files."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_lab import token_cache
from lora_lab.config import ModelConfig
from lora_lab.data import (BatchOrder, IGNORE_INDEX, collate, load_data, load_rows, order_seed, token_bytes, tokenize,
                           use_chat_template)
from lora_lab.launch import train
from lora_lab.models import build_model, load_tokenizer
from lora_lab.results import final_value, load_results
from lora_lab.runs import read_metrics, run_dir
from lora_lab.train import batch_nll, bits_per_byte

LN2 = math.log(2)


def target_text_bytes(tok, labels: torch.Tensor) -> int:
    """The UTF-8 bytes the loss's target tokens decode to, decoded together (special tokens: no text)."""
    targets = [int(x) for x in labels[1:] if x != IGNORE_INDEX]
    return len(tok.decode(targets, skip_special_tokens=True, clean_up_tokenization_spaces=False).encode())


def test_bits_per_byte_of_a_hand_made_batch():
    tok = load_tokenizer("tiny-llama")
    # Answers with characters of 2 and 3 UTF-8 bytes, which byte-level BPE splits across tokens.
    answers = ["Café crème at 20°C.", "Plain words only.", "Naïve — yes: €5."]
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}]}
            for i, a in enumerate(answers)]
    split = tokenize(rows, tok, max_len=128)
    # The targets are the answers and the end-of-turn token, which is no text.
    assert split.target_bytes == [len(a.encode()) for a in answers]
    assert split.target_bytes == [target_text_bytes(tok, y) for y in split.labels]
    table = token_bytes(tok)
    ids = tok.encode(" é", add_special_tokens=False)
    assert table[ids].sum() == 3 and sum(len(tok.decode([i]).encode()) for i in ids) != 3  # a split character
    torch.manual_seed(0)
    model, _ = build_model(ModelConfig())
    with torch.no_grad():
        nll, n = batch_nll(model, collate(split, [0, 1, 2], tok.pad_token_id))
    loss, n_bytes = nll.item() / n, sum(len(a.encode()) for a in answers)
    assert n == sum(int((y[1:] != IGNORE_INDEX).sum()) for y in split.labels)
    assert bits_per_byte(nll.item(), n_bytes) == pytest.approx(loss * n / n_bytes / LN2, rel=1e-12)
    assert math.isnan(bits_per_byte(1.0, 0))


def test_sentencepiece_style_tokens_count_their_spaces_and_fallback_bytes():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(" ", 1, 0)])
    special = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    sp.train_from_iterator(["the cat sat on the mat", "a cat and a hat"] * 20,
                           trainers.BpeTrainer(vocab_size=400, special_tokens=special))
    tok = PreTrainedTokenizerFast(tokenizer_object=sp, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    text = "the cat sat on a wörm"
    ids = tok.encode(text, add_special_tokens=False)
    assert "<0xC3>" in tok.convert_ids_to_tokens(ids)  # ö falls back to its two bytes
    table = token_bytes(tok)
    assert table[ids].sum() == len(f" {text}".encode())  # the leading '▁' is a space inside a text
    assert table[tok.convert_tokens_to_ids(["<s>", "</s>"])].sum() == 0


def test_a_short_run_logs_bpb_consistent_with_its_losses_and_the_targets_bytes(small):
    cfg = small("lora.rank=4", "optim.lr=3e-3", "train.max_steps=3", "train.eval_every=2")
    s = train(cfg)
    assert s["status"] == "completed"
    tok = use_chat_template(load_tokenizer(cfg.model.name), cfg.data)
    train_split, eval_split = load_data(cfg, tok, load_rows(cfg.data))
    order = BatchOrder(len(train_split), cfg.optim.batch_size, order_seed(cfg))
    lines = read_metrics(run_dir(cfg) / "metrics.jsonl")
    train_lines = [r for r in lines if "train_loss" in r]
    for r in train_lines:
        n_bytes = sum(target_text_bytes(tok, train_split.labels[i]) for i in order.batch(r["step"] - 1))
        assert r["target_bytes"] == n_bytes
        assert r["train_bpb"] == pytest.approx(r["train_loss"] * r["target_tokens"] / n_bytes / LN2, rel=1e-9)
    eval_lines = [r for r in lines if "eval_loss" in r]
    assert [r["step"] for r in eval_lines] == [2, 3]
    eval_tokens = sum(int((y[1:] != IGNORE_INDEX).sum()) for y in eval_split.labels)
    eval_bytes = sum(target_text_bytes(tok, y) for y in eval_split.labels)
    for r in eval_lines:
        assert r["eval_bpb"] == pytest.approx(r["eval_loss"] * eval_tokens / eval_bytes / LN2, rel=1e-9)
    assert s["final_train_bpb"] == train_lines[-1]["train_bpb"] and s["final_eval_bpb"] == eval_lines[-1]["eval_bpb"]
    # Bytes per token is the tokenizer's compression: bpb and loss differ by it, not by noise.
    assert 1.5 < train_lines[-1]["target_bytes"] / train_lines[-1]["target_tokens"] < 6
    res = load_results([cfg.run.root]).runs.iloc[0]
    assert (res["final_bpb"], res["final_bpb_sem"]) == final_value([r["train_bpb"] for r in train_lines])
    assert (res["final_train_bpb"], res["final_eval_bpb"]) == (s["final_train_bpb"], s["final_eval_bpb"])


def test_a_cache_file_without_byte_counts_is_rebuilt_not_served(small, capsys):
    cfg = small()
    tok = use_chat_template(load_tokenizer(cfg.model.name), cfg.data)
    first, _ = load_data(cfg, tok, load_rows(cfg.data))
    (path,) = (Path(cfg.run.root) / token_cache.CACHE_DIR).glob("*.npz")
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if not k.endswith("_bytes")}
    key = bytes(arrays.pop("key").tobytes()).decode()
    token_cache.write(path, key, arrays)  # as a cache written before byte counts: same arrays otherwise
    capsys.readouterr()
    again, _ = load_data(cfg, tok, load_rows(cfg.data))
    assert "rebuilding it" in capsys.readouterr().err
    assert again.target_bytes == first.target_bytes and len(again.target_bytes) == len(again)
    with np.load(path, allow_pickle=False) as f:
        assert "train_bytes" in f.files and "eval_bytes" in f.files


# -- wandb's offline files: a transaction log of protobuf records (7-byte header, 32 KiB blocks,
# each chunk a 7-byte header: CRC, length, type full/first/middle/last).


def wandb_records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, part, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (n == 0 and kind == 0):  # the zero padding at the end of a block
            pos += left
            continue
        part += data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            out.append(record)
            part = b""
    return out


def test_an_offline_wandb_run_carries_the_group_grid_point_and_final_loss(small, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = small("lora.rank=4", "lora.layers=mlp", "optim.lr=3e-3", "train.max_steps=2", "train.seed=1",
                "run.experiment=tiny/rank", "logger.wandb=offline")
    s = train(cfg)
    assert s["status"] == "completed"
    (log,) = (tmp_path / "wandb").glob("wandb/offline-run-*/run-*.wandb")
    assert not (run_dir(cfg) / "wandb").exists()  # WANDB_DIR, not the run directory
    records = wandb_records(log)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "tiny/rank" and run.display_name == run_dir(cfg).name
    assert {"lora-r4-mlp-unembed", "lora", "lr=0.003", "rank=4", "layers=mlp", "batch_size=8", "seed=1"} <= set(run.tags)
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert {k: config[k] for k in ("arm", "method", "lr", "rank", "layers", "batch_size", "seed")} == {
        "arm": "lora-r4-mlp-unembed", "method": "lora", "lr": 0.003, "rank": 4, "layers": "mlp", "batch_size": 8, "seed": 1}
    assert config["optim"]["lr"] == 0.003 and config["run_id"] == run_dir(cfg).name
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    assert summary["status"] == "completed"
    for key in ("final_train_loss", "final_eval_loss", "final_train_bpb", "final_eval_bpb"):
        assert summary[key] == s[key] and math.isfinite(s[key])
    history = [{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    logged = [r["train_loss"] for r in read_metrics(run_dir(cfg) / "metrics.jsonl") if "train_loss" in r]
    assert [h["train_loss"] for h in history] == logged


def test_lr_sweep_tables_carry_bits_per_byte_beside_the_final_loss():
    import pandas as pd

    from lora_lab.curves import ucurves

    runs = pd.DataFrame({"curve": ["FullFT"] * 4, "lr": [1e-3, 1e-3, 3e-3, 3e-3], "train.seed": [0, 1, 0, 1],
                         "status": ["completed"] * 4, "method": ["full"] * 4, "rank": [math.nan] * 4, "layers": [None] * 4,
                         "final_loss": [1.0, 1.2, 0.8, 0.9],
                         "final_loss_sem": [0.01] * 4, "final_bpb": [0.5, 0.7, 0.4, 0.5]})
    uc = ucurves(runs).set_index("lr")
    assert uc.loc[1e-3, "final_bpb"] == pytest.approx(0.6) and uc.loc[3e-3, "final_bpb"] == pytest.approx(0.45)
    assert "final_bpb" not in ucurves(runs.drop(columns="final_bpb"))  # runs logged before bits per byte
