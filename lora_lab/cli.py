"""The `lora-lab` command.

    lora-lab train [key=value ...]     one run, LoRA or FullFT, SFT or RL (task=rl); resumes, skips if finished
    lora-lab pair  [key=value ...]     a LoRA run and a FullFT run on the same data; prints both losses
    lora-lab show-config [key=value ...]   the resolved config and the run directory it maps to
    lora-lab build-tiny [--models ...]     rebuild the tiny tokenizer and pretrained base models
    lora-lab show-data [key=value ...] [--rows N] [--json]   the first training rows, targets marked (no model)
    lora-lab fetch EXPERIMENT|key=value ... [--dry-run]      download its models and data sets for offline runs

    lora-lab sweep | status | wait | analyze | reproduce | plan | fit-lr | gpus   see `lora-lab <command> --help`

Overrides use Hydra's syntax: `method=full`, `lora.rank=4`, `model=tiny-moe`, `optim.lr=3e-4`.
Bad keys or values stop with exit code 2 and a one-line message, before any model is loaded; so
does a data set that cannot be used (not available offline, wrong schema, too many malformed rows,
an unreadable file), a run.root that cannot be written, and a hub model not available offline.
Exit codes: 0 completed or diverged (a diverged run is a result), 1 failed, 2 bad config or data.
`python -m lora_lab <command> ...` is the same command (also under torchrun).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lora_lab.config import Config

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

EXIT_FAILED, EXIT_CONFIG = 1, 2

# Directories of the runs that `train` / `pair` have started in this process, for the hint to a
# failed run's record in main().
_started: list[Path] = []

# name -> (module, function, help). The function takes the argument list after the command name and
# returns an exit code; it is imported only when its command runs (keeps `lora-lab --help` fast).
EXTERNAL = {
    "build-tiny": ("lora_lab.tiny.pretrain", "main", "rebuild the tiny tokenizer and base models"),
    "sweep": ("lora_lab.sweep", "sweep_main", "run an experiment's grid (local or SLURM), skipping finished runs; "
              "--refine adds LRs around each arm's optimum"),
    "status": ("lora_lab.status", "status_main", "table of an experiment's runs by state"),
    "wait": ("lora_lab.status", "wait_main", "block until no run of an experiment is queued or running (detached "
             "SLURM sweeps); exit 0 if every run completed"),
    "analyze": ("lora_lab.report", "analyze_main", "figures, tables and the claims scorecard from run directories"),
    "reproduce": ("lora_lab.reproduce", "reproduce_main", "run every experiment of a scale, then analyze"),
    "plan": ("lora_lab.plan", "plan_main", "parameter counts, FLOPs, recommended LRs and capacity for a config"),
    "fit-lr": ("lora_lab.lrs", "fit_lr_main", "refit the LR law from your own sweeps' optimal LRs"),
    "gpus": ("lora_lab.memory", "gpus_main", "GPU memory estimate of a config and how many GPUs it needs"),
    "show-data": ("lora_lab.show", "show_data_main", "the first training rows as tokenized, targets marked (no model)"),
    "fetch": ("lora_lab.fetch", "fetch_main", "download the models and data sets of an experiment for offline runs"),
    "new-experiment": ("lora_lab.scaffold", "new_experiment_main", "write a commented experiment file for your own "
                       "model and data: LoRA ranks and FullFT over LR grids around the recommended LRs"),
    "time-steps": ("lora_lab.steptime", "time_steps_main", "an experiment's LoRA and FullFT steps timed interleaved in "
                   "one process (C6)"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lora-lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("train", "one run (SFT, or RL with task=rl)"), ("pair", "LoRA and FullFT runs, both final losses"),
                       ("show-config", "print the resolved config and run directory")):
        s = sub.add_parser(name, help=text)
        s.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. method=full lora.rank=4")
    for name, (_, _, text) in EXTERNAL.items():
        sub.add_parser(name, help=f"{text} (see {name} --help)", add_help=False)
    return p


def _checked(overrides: list[str]) -> "Config":
    """The composed config of a run to train, checked for a batch that fits the data (ConfigError,
    exit 2). The checks that need the world (a writable run.root, a model the hub can give) run in
    the launch's pre-flight (lora_lab/learner.py), after a finished run has been skipped."""
    from lora_lab.config import check_trainable, compose

    cfg = compose(overrides)
    check_trainable(cfg)
    return cfg


def _train(overrides: list[str]) -> int:
    cfg = _checked(overrides)  # a bad config stops before torch is imported
    from lora_lab.launch import train
    from lora_lab.runs import FINAL_STATUSES, run_dir

    _started.append(run_dir(cfg))
    summary = train(cfg)
    if cfg.task == "rl":
        result = (f"final reward {_f(summary.get('final_reward'))}, eval accuracy {_f(summary.get('base_eval_accuracy'))}"
                  f" -> {_f(summary.get('final_eval_accuracy'))}")
    else:
        result = f"final train loss {_f(summary.get('final_train_loss'))}, eval loss {_f(summary.get('final_eval_loss'))}"
    from lora_lab.distributed import env_from_environ

    if env_from_environ().is_main:  # under torchrun / several SLURM tasks, rank 0 speaks for the run
        print(f"{summary['run_id']}: {summary['status']} after {summary.get('steps')} steps, {result}")
    return 0 if summary["status"] in FINAL_STATUSES else EXIT_FAILED


def _pair(overrides: list[str]) -> int:
    """LoRA vs FullFT on the tiny default, each at its best LR of a coarse sweep: both final losses."""
    lora_keys = [o for o in overrides if o.lstrip("+~").startswith("lora.")]
    common = [o for o in overrides if o not in lora_keys and not o.startswith("method=")]
    # Each method at its best LR of a coarse sweep on this default (experiments/LOG.md, 2026-11-23).
    has_lr = any(o.startswith("optim.lr=") for o in common)
    lora_cfg = _checked(["method=lora", *lora_keys, *common] + ([] if has_lr else ["optim.lr=3e-3"]))
    full_cfg = _checked(["method=full", *common] + ([] if has_lr else ["optim.lr=1e-3"]))
    from lora_lab.launch import train
    from lora_lab.runs import FINAL_STATUSES, run_dir

    results = []
    for cfg in (lora_cfg, full_cfg):
        _started.append(run_dir(cfg))
        s = train(cfg)
        results.append((cfg, s))
    print()
    print(f"{'method':<18}{'lr':>9}{'trainable':>12}{'steps':>7}{'train loss':>12}{'eval loss':>11}  status")
    for cfg, s in results:
        name = f"lora r={cfg.lora.rank} {cfg.lora.layers}" if cfg.method == "lora" else "full"
        print(f"{name:<18}{cfg.optim.lr:>9.1e}{s.get('trainable_params', 0):>12,}{s.get('steps', 0):>7}"
              f"{_f(s.get('final_train_loss')):>12}{_f(s.get('final_eval_loss')):>11}  {s['status']}")
    for cfg, _ in results:
        print(f"  {run_dir(cfg)}")
    return 0 if all(s["status"] in FINAL_STATUSES for _, s in results) else EXIT_FAILED


def _show(overrides: list[str]) -> int:
    from lora_lab.config import check_trainable, compose, to_yaml
    from lora_lab.runs import run_dir

    cfg = compose(overrides)
    check_trainable(cfg)
    print(to_yaml(cfg), end="")
    print(f"# run directory: {run_dir(cfg)}")
    return 0


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _failure_record(exc: BaseException) -> Path | None:
    """The summary.json in which a run started here recorded this very failure, if one did: a run
    that failed before its directory was written (or on a rank that does not write) has none, and an
    older summary.json there would point at another failure. (A sweep's worker asks the same.)"""
    from lora_lab.launch import failure_record

    return failure_record(_started, exc)


def _is(exc: BaseException, module: str, name: str) -> bool:
    """Whether `exc` is an instance of `module.name`, without importing the module."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, getattr(loaded, name))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _started.clear()
    handlers = {"train": _train, "pair": _pair, "show-config": _show}
    if argv[:1] and argv[0] in EXTERNAL:  # its own argument parser
        import importlib

        module, func, _ = EXTERNAL[argv[0]]
        handler, args_list = getattr(importlib.import_module(module), func), argv[1:]
    else:
        args = _parser().parse_args(argv)
        handler, args_list = handlers[args.command], args.overrides
    try:
        return handler(args_list)
    except KeyboardInterrupt:
        print("lora-lab: interrupted; relaunch the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except Exception as exc:
        # The error classes are looked up only among the modules already imported (one that raised
        # was), so that light commands import neither torch nor transformers.
        if _is(exc, "lora_lab.config", "ConfigError"):
            print(f"lora-lab: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if _is(exc, "lora_lab.data", "DataError"):  # raised before the run starts, or recorded as failed
            print(f"lora-lab: data error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        if _is(exc, "lora_lab.runs", "RunBusy"):
            print(f"lora-lab: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if handler in (_train, _pair):  # keep the console to one line, pointing to the traceback when the run recorded it
            record = _failure_record(exc)
            hint = f" (traceback in {record})" if record else ""
            print(f"lora-lab: run failed: {type(exc).__name__}: {exc}{hint}", file=sys.stderr)
        else:
            print(f"lora-lab {argv[0]}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
