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
import pickle
import platform
import re
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # torch is imported where a state is read or written: light commands stay light
    import torch

from lora_lab.config import TINY_PRESETS, Config, TrainConfig, load_config, to_yaml

FINAL_STATUSES = ("completed", "diverged")
# libyaml's safe loader where PyYAML was built with it (10x faster on a sweep of hundreds of runs);
# a safe loader builds plain dicts and lists only: nothing in a run directory runs.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The states of a run directory (run_state): a summary's status, or what the files say.
STATES = ("completed", "diverged", "failed", "corrupt", "running", "unfinished", "pending")
# The files that make a directory a run directory (config.yaml first of all).
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "meta.json", "checkpoint", "adapter")
PACKAGES = ("torch", "transformers", "peft", "hydra-core", "omegaconf", "submitit", "datasets", "tokenizers", "safetensors")


@functools.lru_cache(maxsize=None)
def tiny_weights_fingerprint(name: str) -> str | None:
    """A short hash of a shipped tiny model's weights (lora_lab/assets/<name>/model.safetensors):
    part of a run's identity, so that runs of rebuilt base models never pass for runs of the old ones."""
    path = Path(__file__).resolve().parent / "assets" / name / "model.safetensors"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else None


# How often a run checkpoints and evaluates changes what it writes along the way, not what it
# computes: a preempted run relaunched with another interval must find itself. Runs made while these
# keys were part of the identity keep their ids (see `run_dir`).
SCHEDULE_KEYS = ("checkpoint_every", "eval_every")
# Keys added after runs were made, with the value that computes what those runs computed: at that
# value a key is left out of the identity, so every earlier run keeps its id. Add one line per new key.
ADDED_KEYS: tuple[tuple[str, str, object], ...] = (
    ("data", "chat_template", None),
    ("data", "truncation", "head"),
    ("data", "eval_unseen", False),
    ("lora", "alpha_mode", "fixed"),
    ("rl", "sample_batch", 256),
    ("rl", "val_size", 0),
)
# Keys of a group that counts which decide where and how a run is placed, not what it computes.
PLACEMENT_KEYS: tuple[tuple[str, str], ...] = (("rl", "vllm_gpu_memory"),)


def identity(cfg: Config, legacy: bool = False) -> dict:
    """The part of the config that decides what a run computes (where it is written and how it
    logs do not). The schedule keys count at their defaults, so that runs with the default schedule
    keep the ids they had; `legacy`: as they counted before, at their values."""
    d = cfg.to_dict()
    for group, key, old in ADDED_KEYS:
        if group in d and d[group].get(key, old) == old:
            d[group].pop(key, None)
    for group, key in PLACEMENT_KEYS:
        d.get(group, {}).pop(key, None)
    if not legacy:
        for key in SCHEDULE_KEYS:
            d["train"][key] = TrainConfig.__dataclass_fields__[key].default
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


def config_hash(cfg: Config, legacy: bool = False) -> str:
    blob = json.dumps(identity(cfg, legacy), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def _fmt(x: float, digits: int = 2) -> str:
    """An LR for a run id with the significant digits it has, at most `digits`: 1e-3, 1.7e-3."""
    one = f"{x:.0e}"
    text = f"{x:.{digits - 1}e}" if digits > 1 and float(f"{x:.{digits - 1}e}") != float(one) else one
    return text.replace("e-0", "e-").replace("e+0", "e")


def run_id(cfg: Config) -> str:
    """Readable key values plus a hash of everything that affects the result (seed included),
    so that relaunching a grid finds its finished runs: the name of `run_dir(cfg)`."""
    return run_dir(cfg).name


def _make_id(cfg: Config, legacy: bool = False, lr_digits: int = 2) -> str:
    if cfg.run.id:
        return cfg.run.id
    model = Path(cfg.model.name.rstrip("/")).name
    parts = [model, cfg.data.name]
    if cfg.method == "lora":
        parts += [f"lora-r{cfg.lora.rank}-{cfg.lora.layers}" + ("-unembed" if cfg.lora.unembed else "")]
    else:
        parts += ["full"]
    batch = f"rl{cfg.rl.prompts_per_step}x{cfg.rl.group_size}" if cfg.task == "rl" else f"bs{cfg.optim.batch_size}"
    parts += [f"lr{_fmt(cfg.optim.lr, lr_digits)}", batch, f"s{cfg.train.seed}", config_hash(cfg, legacy)]
    return "_".join(parts)


def legacy_run_id(cfg: Config) -> str:
    """The id a run of this config had while the schedule keys were part of its identity."""
    return _make_id(cfg, legacy=True)


def run_dir(cfg: Config) -> Path:
    """<run.root>/<run.experiment>/<run id>: where the run of this config lives. A run made when its
    schedule (checkpoint and eval intervals) was part of its id is found under that id, and one made
    while ids showed one digit of the LR (lr2e-3 for 1.7e-3) under that one."""
    base = Path(cfg.run.root) / cfg.run.experiment
    path = base / _make_id(cfg)
    if not path.exists():
        olds = [legacy_run_id(cfg)]
        if _fmt(cfg.optim.lr) != _fmt(cfg.optim.lr, 1):
            olds += [_make_id(cfg, lr_digits=1), _make_id(cfg, legacy=True, lr_digits=1)]
        for old in olds:
            if old != path.name and (base / old).exists():
                return base / old
    return path


class RunsError(ValueError):
    """A path that should hold run directories does not exist (one line, names the path)."""


def find_run_dirs(paths) -> list[Path]:
    """Every run directory (one holding config.yaml, or another run file without it: a damaged run,
    which readers report rather than skip) at or below the given paths, sorted, without duplicates.
    Raises RunsError for a path that does not exist."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise RunsError(f"{p}: no such file or directory; give a runs directory, an experiment directory or a run directory")
        if any((p / f).exists() for f in RUN_FILES):
            found.add(p.resolve())
            continue
        for root, dirs, files in os.walk(p):
            if any(f in files or f in dirs for f in RUN_FILES):
                found.add(Path(root).resolve())
                dirs[:] = []  # a run directory holds no other run
            else:
                dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


class CheckpointError(RuntimeError):
    """A checkpoint that is refused (it holds more than tensors and plain values) or unreadable; the
    message names the file and what to do."""


def _legacy_globals() -> list:
    """What checkpoints written before RNG state was stored as tensors need beyond weights_only's
    defaults: numpy arrays of plain numbers (their reconstruction runs no code of the file's)."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_state(path: Path) -> dict | None:
    """torch.load(path, weights_only=True) of a state file, or None if there is none."""
    path = Path(path)
    if not path.exists():
        return None
    import torch

    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is a page; keep the line that says what the file asked for.
        found = re.search(r"(GLOBAL [\w.]+)|Unsupported (operand \d+)", str(exc))
        what = (f"it names {found.group(1)}, not a tensor or a plain value" if found and found.group(1) else
                f"not a checkpoint written by lora-lab ({found.group(2) if found else type(exc).__name__})")
        raise CheckpointError(f"{path}: refused, nothing in it was run: {what}; delete it if you did not write it "
                              f"(the run then starts again from step 0)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({type(exc).__name__}: {first[:160]}); delete it to start the run "
                              f"again from step 0") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a lora-lab checkpoint (a {type(state).__name__}, not a dict); delete it "
                              f"to start the run again from step 0")
    return state


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


class CorruptFile(ValueError):
    """A file of a run directory that cannot be read as the contract says; the message names it."""


def _no_constant(name: str) -> Any:
    # The harness writes strict JSON (non-finite floats become null): a NaN or Infinity literal did
    # not come from it, and must not pass for a diverged run's loss.
    raise ValueError(f"{name} literal (lora-lab writes non-finite numbers as null)")


def _json_object(text: bytes) -> dict:
    obj = json.loads(text.decode("utf-8"), parse_constant=_no_constant)
    if not isinstance(obj, dict):
        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    return obj


def read_json(path: Path) -> dict | None:
    """A JSON object file of a run directory; None if there is none, CorruptFile (naming the file)
    if it is not one (binary, cut short, not an object)."""
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return _json_object(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFile(f"{path}: not a JSON object ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def read_metrics(path: Path, problems: list[str] | None = None) -> list[dict]:
    """The lines of a metrics.jsonl, in order. A line cut short at the end (a killed writer) is left
    out; any other line that is not a JSON object with a `step` (binary, broken, a NaN literal) is
    skipped, and described in `problems` ("<file> line N: ...") when a list is given."""
    rows = []
    try:
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if not line.endswith(b"\n"):
                    break  # only the last line can lack its newline
                try:
                    row = _json_object(line)
                    if "step" not in row:
                        raise ValueError("no 'step'")
                except (UnicodeDecodeError, ValueError) as exc:
                    if problems is not None:
                        problems.append(f"{path} line {n}: {_first_line(exc)}")
                    continue
                rows.append(row)
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
    """{state, step, last, error} of one run directory (state in STATES). A directory whose summary
    is unreadable, or that has run files but no config.yaml, is `corrupt`, with the file named."""
    info = {"path": path, **last_metrics(path)}
    try:
        summary = read_json(path / "summary.json")
    except CorruptFile as exc:
        return {**info, "state": "corrupt", "error": str(exc)}
    if path.exists() and not (path / "config.yaml").exists() and any((path / f).exists() for f in RUN_FILES):
        return {**info, "state": "corrupt", "error": f"{path}: no config.yaml, so not a run lora-lab can resume or analyze"}
    if summary and summary.get("status") in ("completed", "diverged", "failed"):
        info["state"] = summary["status"]
        info["step"] = summary.get("steps", info.get("step"))
        info["wall_s"] = summary.get("launch_wall_s") or summary.get("wall_s")  # this launch's time, start-up included
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
        """summary.json, None if there is none; CorruptFile if it cannot be read."""
        return read_json(self.summary_path)

    def config(self) -> Config:
        """The run's config.yaml as a validated Config (safe YAML; nothing in it runs)."""
        return load_config(self.config_path)

    def config_dict(self) -> dict:
        """config.yaml as plain dicts, not validated: the analysis reads runs of any version.
        CorruptFile (naming the file) if it is missing or not a YAML mapping."""
        try:
            cfg = yaml.load(self.config_path.read_bytes().decode("utf-8"), Loader=_YAML_LOADER)
        except FileNotFoundError:
            raise CorruptFile(f"{self.config_path}: missing, so the run's settings are unknown") from None
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            raise CorruptFile(f"{self.config_path}: not YAML ({_first_line(exc)})") from None
        if not isinstance(cfg, dict):
            raise CorruptFile(f"{self.config_path}: a YAML {type(cfg).__name__}, not a mapping of settings")
        return cfg

    def metrics(self, problems: list[str] | None = None) -> list[dict]:
        return read_metrics(self.metrics_path, problems)

    def meta(self) -> dict | None:
        """meta.json, None if there is none; CorruptFile if it cannot be read."""
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
        import torch

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
        try:
            old = read_json(self.meta_path) or {}
        except CorruptFile:
            old = {}  # rewritten whole below
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
        import torch

        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self) -> dict | None:
        """The checkpoint's state, or None. Read with torch.load(weights_only=True): tensors and plain
        values only, nothing in the file runs (a run root may be shared by the users of a cluster).
        CheckpointError, naming the file, for one that is refused or unreadable."""
        return load_state(self.checkpoint_path)


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
