"""Pre-flight checks that look at the world rather than at the config alone (here the filesystem),
each raising a ConfigError whose one line names the key and the fix (CLI exit 2) before any data or
model loads. lora_lab/config.py stays a leaf that judges values; these judge what the values point
at. The standard library and the config module only, so that anything may call them early. (Whether
a hub model is available offline needs the hub's cache: lora_lab/models.py check_available.)

    from lora_lab.checks import check_run_root
    check_run_root(cfg.run.root)
"""

from __future__ import annotations

import os
from pathlib import Path

from lora_lab.config import ConfigError


def check_run_root(root: str | Path) -> None:
    """run.root must be a directory this process can write, or one it can create: the nearest
    existing ancestor is a writable directory. Otherwise a run would fail at its first write (its
    lock, config.yaml) with an OSError, after the data had been read."""
    path = Path(root).expanduser()
    key = f"run.root={str(root)!r}"
    fix = "set run.root=<a writable directory>"
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{key}: is a file, not a directory; {fix}")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: the directory is not writable; {fix}")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}: cannot create it, {parent} is a file; {fix}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: cannot create it, {parent} is not writable; {fix}")
