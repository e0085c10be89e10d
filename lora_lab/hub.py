"""Access to the Hugging Face hub: whether it can be reached, the offline switches, and downloads
into its caches.

Models (lora_lab/models.py), model configs (lora_lab/flops.py) and real data sets
(lora_lab/data.py) all ask here first, so that an air-gapped node goes straight to local files and
caches instead of spending tens of seconds in the libraries' retries. `lora-lab fetch`
(lora_lab/fetch.py) fills the caches through `fetch_model` and `fetch_dataset` beforehand; both
write where the libraries read (HF_HOME, HF_HUB_CACHE, HF_DATASETS_CACHE).

    python -m lora_lab.hub      # prints whether this process would treat the hub as offline
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import urllib.parse
import urllib.request
from typing import Iterator

# What a run loads of a hub model (AutoConfig, AutoTokenizer, AutoModelForCausalLM from safetensors),
# and what it never does: the original/ consolidated checkpoints of Meta's repositories (as large as
# the model again) and other frameworks' weights.
MODEL_FILES = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja")
MODEL_SKIP = ("original/*", "*.pth", "*.bin", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot")

# Any of these set to 1/ON/YES/TRUE makes the hub offline for every lora-lab component.
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host (or the https proxy in front of it) takes a TCP connection within
    `timeout` s. Without this check an air-gapped node spends ~25 s in datasets' retries first."""
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        host, port = p.hostname or host, p.port or 80
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def offline() -> bool:
    """An offline variable is set, or the hub cannot be reached."""
    if any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE") for k in OFFLINE_VARS):
        return True
    return not reachable()


@contextlib.contextmanager
def offline_flags(on: bool) -> Iterator[None]:
    """datasets and huggingface_hub read HF_HUB_OFFLINE once, at import: set their flags for one
    load, so that an unreachable hub goes straight to the local cache instead of retrying."""
    import datasets.config as ds_config
    from huggingface_hub import constants as hub_constants

    saved = ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE
    if on:
        ds_config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        ds_config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def model_cached(name: str, revision: str | None = None) -> bool:
    """Whether the hub cache holds a model's config.json and its safetensors weights (every shard)."""
    import json
    from pathlib import Path

    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> str | None:
        found = try_to_load_from_cache(name, filename, revision=revision)
        return found if isinstance(found, str) else None

    if not cached("config.json"):
        return False
    if cached("model.safetensors"):
        return True
    index = cached("model.safetensors.index.json")
    if not index:
        return False
    shards = set(json.loads(Path(index).read_text()).get("weight_map", {}).values())
    return all(cached(s) for s in shards)


def fetch_model(name: str, revision: str | None = None, trust_remote_code: bool = False) -> str:
    """Download a hub model's config, tokenizer and weights into the hub cache; its local path."""
    from huggingface_hub import snapshot_download

    from pathlib import Path

    patterns = list(MODEL_FILES) + (["*.py"] if trust_remote_code else [])
    path = snapshot_download(repo_id=name, revision=revision, allow_patterns=patterns, ignore_patterns=list(MODEL_SKIP))
    if not any(Path(path).glob("*.safetensors")):  # an older repository with PyTorch weights only
        path = snapshot_download(repo_id=name, revision=revision, allow_patterns=["pytorch_model*.bin"])
    return path


def fetch_dataset(hub_id: str, config: str | None, split: str) -> int:
    """Download one split of a hub data set and prepare it in the datasets cache, where a run with
    the hub offline finds it; its number of rows."""
    import datasets

    return len(datasets.load_dataset(hub_id, config, split=split))


if __name__ == "__main__":
    print("offline" if offline() else "online")
    sys.exit(0)
