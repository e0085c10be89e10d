"""The run directory: the one contract between training and analysis (docs/runs.md).

    <run.root>/<experiment>/<run_id>/
        config.yaml     fully resolved config
        metrics.jsonl   one JSON object per line, flushed as written, every line has `step`
        summary.json    status completed | diverged | failed, final metrics; written at the end
        meta.json       git commit and dirty flag, package versions, host, device, SLURM job id
        adapter/        LoRA adapter in peft's format (completed LoRA runs)
        checkpoint/     state.pt, what resume needs; replaced atomically

This module owns the directory: the run id and path of a config, writing, locking, reading metrics
and summaries, and the state of a run (`run_state`). Sweeps, status and the analysis's loader go
through it; nothing else reads these files by hand. Analysis reads only these files;
`load_run(run_dir)` gives back the trained model.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from lora_lab.config import TINY_PRESETS, Config, load_config, to_yaml

FINAL_STATUSES = ("completed", "diverged")
# libyaml's safe loader where PyYAML was built with it (10x faster on a sweep of hundreds of runs);
# a safe loader builds plain dicts and lists only: nothing in a run directory runs.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The states of a run directory (run_state): a summary's status, or what the files say.
STATES = ("completed", "diverged", "failed", "running", "unfinished", "pending")
PACKAGES = ("torch", "transformers", "peft", "hydra-core", "omegaconf", "submitit", "datasets", "tokenizers", "safetensors")


@functools.lru_cache(maxsize=None)
def tiny_weights_fingerprint(name: str) -> str | None:
    """A short hash of a shipped tiny model's weights (lora_lab/assets/<name>/model.safetensors):
    part of a run's identity, so that runs of rebuilt base models never pass for runs of the old ones."""
    path = Path(__file__).resolve().parent / "assets" / name / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


def identity(cfg: Config) -> dict:
    """The part of the config that decides what a run computes (where it is written and how it
    logs do not)."""
    d = cfg.to_dict()
    if cfg.model.name in TINY_PRESETS:
        d["model"]["weights"] = tiny_weights_fingerprint(cfg.model.name)
    for k in ("run", "logger", "dist"):
        d.pop(k)
    if cfg.task != "rl":
        # rl.* does not affect an SFT run: leaving it out keeps SFT run ids as they were before it existed.
        d.pop("rl")
    if cfg.method == "full":
        d.pop("lora")
    return d


def config_hash(cfg: Config) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _fmt(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def run_id(cfg: Config) -> str:
    """Readable key values plus a hash of everything that affects the result (seed included),
    so that relaunching a grid finds its finished runs."""
    if cfg.run.id:
        return cfg.run.id
    model = Path(cfg.model.name.rstrip("/")).name
    parts = [model, cfg.data.name]
    if cfg.method == "lora":
        parts += [f"lora-r{cfg.lora.rank}-{cfg.lora.layers}" + ("-unembed" if cfg.lora.unembed else "")]
    else:
        parts += ["full"]
    batch = f"rl{cfg.rl.prompts_per_step}x{cfg.rl.group_size}" if cfg.task == "rl" else f"bs{cfg.optim.batch_size}"
    parts += [f"lr{_fmt(cfg.optim.lr)}", batch, f"s{cfg.train.seed}", config_hash(cfg)]
    return "_".join(parts)


def run_dir(cfg: Config) -> Path:
    """<run.root>/<run.experiment>/<run id>: where the run of this config lives."""
    return Path(cfg.run.root) / cfg.run.experiment / run_id(cfg)


class RunsError(ValueError):
    """A path that should hold run directories does not exist (one line, names the path)."""


def find_run_dirs(paths) -> list[Path]:
    """Every run directory (one holding config.yaml) at or below the given paths, sorted, without
    duplicates. Raises RunsError for a path that does not exist."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise RunsError(f"{p}: no such file or directory; give a runs directory, an experiment directory or a run directory")
        if (p / "config.yaml").is_file():
            found.add(p.resolve())
            continue
        for root, dirs, files in os.walk(p):
            if "config.yaml" in files:
                found.add(Path(root).resolve())
                dirs[:] = []  # a run directory holds no other run
            else:
                dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


class RunBusy(RuntimeError):
    """Another process holds the run directory's lock."""


def _clean(x: Any) -> Any:
    """Non-finite floats become null so every line is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(_clean(obj), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_metrics(path: Path) -> list[dict]:
    """All complete lines of a metrics.jsonl; a truncated last line (a killed writer) is ignored."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    break
    except FileNotFoundError:
        pass
    return rows


def _git_info() -> dict:
    src = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"git_commit": None, "git_dirty": None}


def _versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


# -- the state of a run directory ---------------------------------------------------------------

def last_metrics(path: Path) -> dict:
    """Steps done and the last training value, from the tail of metrics.jsonl."""
    f = path / "metrics.jsonl"
    if not f.exists():
        return {}
    with open(f, "rb") as fh:
        fh.seek(max(0, f.stat().st_size - 8192))
        lines = fh.read().decode(errors="replace").splitlines()
    out: dict = {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a truncated last line, or the cut-off first line of the tail
        for key in ("train_loss", "reward"):
            if key in row and "last" not in out:
                out["last"], out["last_key"], out["step"] = row[key], key, row.get("step")
        if "last" in out:
            break
    return out


def is_locked(path: Path) -> bool:
    """Whether a live process holds the run directory's lock."""
    lock = path / ".lock"
    if not lock.exists():
        return False
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def run_state(path: Path) -> dict:
    """{state, step, last, error} of one run directory (state in STATES)."""
    info = {"path": path, **last_metrics(path)}
    summary = read_json(path / "summary.json")
    if summary and summary.get("status") in ("completed", "diverged", "failed"):
        info["state"] = summary["status"]
        info["step"] = summary.get("steps", info.get("step"))
        if summary.get("error"):
            info["error"] = str(summary["error"]).strip().splitlines()[-1]
    elif not path.exists():
        info["state"] = "pending"
    elif is_locked(path):
        info["state"] = "running"
    else:
        info["state"] = "unfinished" if (path / "metrics.jsonl").exists() else "pending"
    return info



class RunDir:
    """A run directory, its lock, and its files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file = None
        self._metrics = None

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    meta_path = property(lambda self: self.path / "meta.json")
    adapter_path = property(lambda self: self.path / "adapter")
    checkpoint_path = property(lambda self: self.path / "checkpoint" / "state.pt")

    # -- lifecycle ---------------------------------------------------------------------------

    def summary(self) -> dict | None:
        return read_json(self.summary_path)

    def config(self) -> Config:
        """The run's config.yaml as a validated Config (safe YAML; nothing in it runs)."""
        return load_config(self.config_path)

    def config_dict(self) -> dict:
        """config.yaml as plain dicts, not validated: the analysis reads runs of any version."""
        return yaml.load(self.config_path.read_text(), Loader=_YAML_LOADER) or {}

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)

    def meta(self) -> dict | None:
        return read_json(self.meta_path)

    def lock(self) -> None:
        """One process per run directory; the lock dies with the process (also on SIGKILL)."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise RunBusy(f"{self.path} is being written by another process") from None

    def unlock(self) -> None:
        if self._metrics:
            self._metrics.close()
            self._metrics = None
        if self._lock_file:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def write_config(self, cfg: Config) -> None:
        if self.config_path.exists():
            old = load_config(self.config_path)
            if identity(old) != identity(cfg):
                raise ValueError(f"{self.config_path} holds a different config; use another run.root or run.id")
        tmp = self.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(to_yaml(cfg))
        os.replace(tmp, self.config_path)

    def write_meta(self, device: torch.device, resumed_from: int, world_size: int = 1) -> None:
        meta = {
            **_git_info(),
            "packages": _versions(),
            "python": platform.python_version(),
            "host": socket.gethostname(),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "slurm_array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
            "world_size": world_size,
            "argv": sys.argv,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_step": resumed_from,
        }
        old = read_json(self.meta_path) or {}
        meta["launches"] = old.get("launches", 0) + 1
        write_json_atomic(self.meta_path, meta)

    def write_summary(self, summary: dict) -> None:
        write_json_atomic(self.summary_path, summary)

    def clear_summary(self) -> None:
        self.summary_path.unlink(missing_ok=True)

    # -- metrics -----------------------------------------------------------------------------

    def open_metrics(self, keep_upto_step: int) -> None:
        """Keep the complete lines with step <= keep_upto_step (those the checkpoint covers),
        then append: a resumed run has no duplicated or missing steps."""
        rows = [r for r in read_metrics(self.metrics_path) if r.get("step", math.inf) <= keep_upto_step]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r, allow_nan=False) + "\n")
        os.replace(tmp, self.metrics_path)
        self._metrics = open(self.metrics_path, "a")

    def log(self, row: dict) -> None:
        self._metrics.write(json.dumps(_clean(row), allow_nan=False) + "\n")
        self._metrics.flush()

    # -- checkpoint --------------------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)


class ReadOnlyRunDir(RunDir):
    """The run directory as the processes of a multi-process run other than rank 0 see it
    (lora_lab/distributed.py): they read it, rank 0 alone writes it."""

    def _skip(self, *args, **kwargs) -> None:
        return None

    lock = unlock = write_config = write_meta = write_summary = clear_summary = _skip
    open_metrics = log = save_checkpoint = _skip


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """(model, tokenizer) of a finished run: the base model with the run's adapter (LoRA) or
    with its trained weights (FullFT), in eval mode."""
    from lora_lab.lora import apply_lora, load_peft_tensors
    from lora_lab.models import build_model

    rd = RunDir(run_dir)
    if not rd.config_path.exists():
        raise FileNotFoundError(f"{rd.path} has no config.yaml: not a run directory")
    cfg = load_config(rd.config_path)
    model, tok = build_model(cfg.model, device)
    if cfg.method == "lora":
        if not (rd.adapter_path / "adapter_model.safetensors").exists():
            raise FileNotFoundError(f"{rd.adapter_path} missing: the run did not complete")
        sites = apply_lora(model, cfg.lora)
        load_peft_tensors(sites, rd.adapter_path)
    else:
        state = rd.load_checkpoint()
        if state is None:
            raise FileNotFoundError(f"{rd.checkpoint_path} missing: the run has no trained weights")
        model.load_state_dict(state["trainable"])
    model.to(device).eval()
    return model, tok
