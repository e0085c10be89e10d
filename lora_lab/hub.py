"""Access to the Hugging Face hub: whether it can be reached, and the offline switches.

Models (lora_lab/models.py), model configs (lora_lab/flops.py) and real data sets
(lora_lab/data.py) all ask here first, so that an air-gapped node goes straight to local files and
caches instead of spending tens of seconds in the libraries' retries.

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


if __name__ == "__main__":
    print("offline" if offline() else "online")
    sys.exit(0)
