"""A sweep's worker: one process that imports torch and transformers once, then trains grid points
one after another, each as `lora-lab train` would in a process of its own (the run directory, run
id, seeds, resume, skip-if-finished and failure records of lora_lab/launch.py), with the process's
global state put back before each run (`Baseline`). The local pool (lora_lab/pool.py) starts one per
parallel slot; a packed SLURM job (lora_lab/dispatch.py, `runs_per_job`) runs its runs through
`run_pack` in the job's own process.

    python -m lora_lab.worker --threads 1     # what the pool starts; speaks JSON lines

Protocol: the worker writes {"ready": true, ...} once on stdout, then reads one job per line on
stdin, {"job": i, "run_id", "path", "config": <Config.to_dict()>, "threads"}, and answers each with
{"job": i, "run_id", "status", "code", "error", "record", "steps", "wall_s", "pid"} (launch.outcome).
Everything else the worker or a run prints goes to stderr (the pool's log of the worker); end of
input ends it. SIGTERM stops the run in flight, which stays unfinished (answered as
"interrupted"), and ends the worker; SIGINT is the pool's to handle, so a terminal's Ctrl-C reaches
the runs only through it. A worker whose parent dies stops the same way.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
import threading
import time
from typing import IO, Any

# Checked by the pool, so that a worker of another version is never sent jobs.
PROTOCOL = 1


class Baseline:
    """The process-wide state a run may change, as it was before the first run, put back before each
    run: a run in a worker starts as it would in a fresh process. Covered: RNGs (re-seeded from fresh
    entropy, as a new process is: torch's default generator is seeded at random at start-up, and each
    run seeds its own from train.seed), torch threads, torch's global flags (deterministic
    algorithms, default dtype and device, grad mode, anomaly detection, autocast, matmul precision,
    cuDNN / TF32 switches), lora_lab's functools caches, environment variables, the working directory,
    sys.argv, logging handlers and levels, warning filters, sys.stdout / stderr, torch.distributed,
    and (GPU) cached memory and peak statistics. Not covered: anything a run keeps in a module of its
    own making, and str hashing (PYTHONHASHSEED is per process; lora-lab's results do not depend on it)."""

    def __init__(self) -> None:
        import logging
        import warnings

        self.env = dict(os.environ)
        self.cwd = os.getcwd()
        self.argv = list(sys.argv)
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self.flags = _torch_flags()
        self.warnings = list(warnings.filters)
        self.logging_disable = logging.root.manager.disable
        self.loggers = {name: _logger_state(lg) for name, lg in _loggers().items()}

    def restore(self, threads: int | None = None) -> list[str]:
        """Put the baseline back; returns what a previous run had changed (for the worker's log)."""
        import logging
        import random
        import warnings

        import numpy as np
        import torch

        changed = []
        gc.collect()
        if os.environ != self.env:
            changed.append("environment")
            os.environ.clear()
            os.environ.update(self.env)
        if os.getcwd() != self.cwd:
            changed.append("working directory")
            os.chdir(self.cwd)
        sys.argv[:] = self.argv
        if sys.stdout is not self.stdout or sys.stderr is not self.stderr:
            changed.append("sys.stdout/stderr")
            sys.stdout, sys.stderr = self.stdout, self.stderr
        flags = _torch_flags()
        for key, value in self.flags.items():
            if flags[key] != value:
                changed.append(f"torch {key}")
                _SETTERS[key](value)
        torch.clear_autocast_cache()
        if threads:
            torch.set_num_threads(threads)
        # A fresh process draws fresh seeds: nothing a run computes may depend on the previous run's draws.
        random.seed()
        np.random.seed()
        torch.seed()
        if torch.cuda.is_available():
            torch.cuda.seed_all()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for module in [m for name, m in list(sys.modules.items()) if name.split(".")[0] == "lora_lab"]:
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)) and getattr(value, "__module__", None) == module.__name__:
                    value.cache_clear()  # e.g. runs.tiny_weights_fingerprint: a rebuilt model is a new model
        if list(warnings.filters) != self.warnings:
            changed.append("warning filters")
            warnings.filters[:] = self.warnings
            warnings._filters_mutated()  # type: ignore[attr-defined]
        if logging.root.manager.disable != self.logging_disable:
            logging.disable(self.logging_disable)
        for name, lg in _loggers().items():
            before = self.loggers.get(name)
            now = _logger_state(lg)
            if now == before or (before is None and now == ((), logging.NOTSET, True, False)):
                continue
            changed.append(f"logger {name or 'root'}")
            keep = before[0] if before else ()
            for h in lg.handlers[:]:
                if h not in keep:
                    lg.removeHandler(h)
                    h.close()  # e.g. a file handler a run opened in its directory
            for h in keep:
                if h not in lg.handlers:
                    lg.addHandler(h)
            lg.setLevel(before[1] if before else logging.NOTSET)
            lg.propagate, lg.disabled = (before[2], before[3]) if before else (True, False)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            changed.append("torch.distributed")
            dist.destroy_process_group()
        from lora_lab import distributed

        distributed.teardown()  # this process's place: one process again
        return changed


def _loggers() -> dict[str, Any]:
    import logging

    out = {"": logging.root}
    out.update({n: lg for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)})
    return out


def _logger_state(lg: Any) -> tuple:
    return tuple(lg.handlers), lg.level, lg.propagate, lg.disabled


def _torch_flags() -> dict[str, Any]:
    import torch

    b = torch.backends
    return {
        "deterministic algorithms": (torch.are_deterministic_algorithms_enabled(),
                                     torch.is_deterministic_algorithms_warn_only_enabled()),
        "default dtype": torch.get_default_dtype(),
        "default device": str(torch.get_default_device()),
        "grad mode": torch.is_grad_enabled(),
        "anomaly detection": torch.is_anomaly_enabled(),
        "float32 matmul precision": torch.get_float32_matmul_precision(),
        "autocast": tuple((d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")),
        "cudnn": (b.cudnn.enabled, b.cudnn.benchmark, b.cudnn.deterministic, b.cudnn.allow_tf32),
        "cuda matmul": (b.cuda.matmul.allow_tf32, b.cuda.matmul.allow_fp16_reduced_precision_reduction,
                        b.cuda.matmul.allow_bf16_reduced_precision_reduction),
    }


def _set_autocast(value: tuple) -> None:
    import torch

    for device, enabled, dtype in value:
        torch.set_autocast_enabled(device, enabled)
        torch.set_autocast_dtype(device, dtype)


def _set_cudnn(value: tuple) -> None:
    import torch

    c = torch.backends.cudnn
    c.enabled, c.benchmark, c.deterministic, c.allow_tf32 = value


def _set_cuda_matmul(value: tuple) -> None:
    import torch

    m = torch.backends.cuda.matmul
    m.allow_tf32, m.allow_fp16_reduced_precision_reduction, m.allow_bf16_reduced_precision_reduction = value


def _set_deterministic(value: tuple) -> None:
    import torch

    torch.use_deterministic_algorithms(value[0], warn_only=value[1])


def _torch_setter(name: str) -> Any:
    def setter(value: Any) -> None:
        import torch

        getattr(torch, name)(value)

    return setter


_SETTERS = {
    "deterministic algorithms": _set_deterministic,
    "default dtype": _torch_setter("set_default_dtype"),
    "default device": _torch_setter("set_default_device"),
    "grad mode": _torch_setter("set_grad_enabled"),
    "anomaly detection": lambda v: __import__("torch").autograd.set_detect_anomaly(v),
    "float32 matmul precision": _torch_setter("set_float32_matmul_precision"),
    "autocast": _set_autocast,
    "cudnn": _set_cudnn,
    "cuda matmul": _set_cuda_matmul,
}


def run_config(cfg: Any, baseline: Baseline, threads: int | None = None, log: IO[str] | None = None) -> dict:
    """One run after putting the baseline back: launch.outcome's record, plus wall_s. Ctrl-C,
    SIGTERM and SystemExit propagate (the run stays unfinished)."""
    from lora_lab.launch import outcome

    log = log or sys.stderr
    t0 = time.monotonic()
    changed = baseline.restore(threads)
    if changed:
        print(f"[worker] put back what the previous run changed: {', '.join(changed)}", file=log, flush=True)
    result = outcome(cfg)
    result["wall_s"] = round(time.monotonic() - t0, 3)
    line = f"{result['run_id']}: {result['status']}"
    if result.get("error"):
        line += f": {result['error']}"
    if result.get("record"):
        line += f" (traceback in {result['record']})"
    print(f"[worker] {line} ({result['wall_s']:.1f} s)", file=log, flush=True)
    gc.collect()
    return result


def run_pack(configs: list[Any], threads: int | None = None) -> list[dict]:
    """The runs of a packed SLURM job, one after another in this process (lora_lab/dispatch.py). A run
    that ends (completed, diverged, failed, or refused) does not stop the others; a requeue or a
    signal (SystemExit, KeyboardInterrupt) does, and the requeued job skips the finished runs."""
    baseline = Baseline()
    return [run_config(cfg, baseline, threads) for cfg in configs]


# -- the worker process -----------------------------------------------------------------------------

class _Stop:
    """SIGTERM raises KeyboardInterrupt once (launch.train then leaves the run unfinished); later
    ones are ignored so that the run's clean-up and the answer to the pool finish."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


def _watch_parent(parent: int) -> None:
    """Stop like on SIGTERM when the pool's process is gone (killed with SIGKILL, say): the run in
    flight is left unfinished instead of training on for nobody."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _job_config(msg: dict) -> Any:
    """The job's Config, checked to be the run the pool meant: same run directory (hence run id)."""
    from lora_lab.config import from_dictconfig
    from lora_lab.runs import run_dir

    cfg = from_dictconfig(msg["config"])
    if str(run_dir(cfg)) != msg["path"]:
        raise RuntimeError(f"the config sent for {msg['run_id']} maps to {run_dir(cfg)}, not {msg['path']}")
    return cfg


def serve(jobs: IO[str], answers: IO[str], threads: int | None) -> int:
    t0 = time.monotonic()
    import peft  # noqa: F401 - the fixed cost a worker pays once; before the baseline, so that the
    import torch  # noqa: F401 - loggers these set up at import are theirs, not a run's
    import transformers  # noqa: F401

    from lora_lab import launch  # noqa: F401

    if threads:
        torch.set_num_threads(threads)
    # What the imports made lives as long as the worker: moved out of the collector's sight, so that
    # the full collections around each run (and those Python starts itself during one) scan the runs'
    # objects only, not the ~370k of torch and transformers (~0.2 s each here).
    gc.collect()
    gc.freeze()
    baseline = Baseline()
    _send(answers, {"ready": True, "protocol": PROTOCOL, "pid": os.getpid(), "start_s": round(time.monotonic() - t0, 3)})
    current = None
    try:
        for line in iter(jobs.readline, ""):
            if not line.strip():
                continue
            msg = json.loads(line)
            current = msg
            print(f"[worker] job {msg['job']}: {msg['run_id']}", file=sys.stderr, flush=True)
            try:
                cfg = _job_config(msg)
            except Exception as exc:  # noqa: BLE001 - a job this worker cannot read is answered, not fatal
                result = {"run_id": msg["run_id"], "status": "failed", "code": 1,
                          "error": f"{type(exc).__name__}: {exc}", "record": None, "steps": None, "wall_s": 0.0}
            else:
                result = run_config(cfg, baseline, msg.get("threads") or threads)
            _send(answers, {"job": msg["job"], "pid": os.getpid(), **result})
            current = None
    except KeyboardInterrupt:
        if current is not None:
            _send(answers, {"job": current["job"], "pid": os.getpid(), "run_id": current["run_id"],
                            "status": "interrupted", "code": 130, "error": None, "record": None, "steps": None})
        return 130
    return 0


def _send(answers: IO[str], msg: dict) -> None:
    try:
        answers.write(json.dumps(msg) + "\n")
        answers.flush()
    except (BrokenPipeError, OSError):  # the pool is gone; its watchdog ends this process
        pass


def main(argv: list[str] | None = None) -> int:
    # First of all: the pool decides what Ctrl-C does (SIGINT ignored here); SIGTERM stops a run.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _Stop())
    p = argparse.ArgumentParser(prog="python -m lora_lab.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=None, help="torch threads of each run (default: torch's)")
    args = p.parse_args(argv)
    # The answers keep stdout's pipe; anything printed (by Python or by a library's C code) goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        code = serve(sys.stdin, answers, args.threads)
    except KeyboardInterrupt:  # stopped while starting or between jobs
        return 130
    if code == 0:
        _quick_exit(answers)
    return code


def _quick_exit(answers: IO[str]) -> None:
    """End of input with no run in flight: every run has closed its files, so the worker ends at once
    instead of tearing down torch and transformers module by module (~1 s here, and the last worker's
    exit is the last thing a sweep waits for). What Python would still do at exit is done first:
    logging's handlers and the standard streams are flushed."""
    import logging

    logging.shutdown()
    for stream in (answers, sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
