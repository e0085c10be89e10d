"""Shared fixtures: small, fast versions of the tiny default."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

# Small enough for a 2-core CPU: a few seconds per run.
SMALL = ["data.num_examples=64", "data.eval_size=16", "data.max_seq_len=64", "optim.batch_size=8",
         "train.eval_every=0", "train.checkpoint_every=0", "logger.progress=none"]

LORA_LAB = str(Path(sys.executable).with_name("lora-lab"))


@pytest.fixture
def small(tmp_path):
    """compose() with the small settings and a temporary run.root."""
    from lora_lab.config import compose

    def make(*overrides: str):
        return compose([*SMALL, f"run.root={tmp_path / 'runs'}", *overrides])

    return make
