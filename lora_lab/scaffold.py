"""`lora-lab new-experiment`: a commented experiment file to start a sweep of your own from: LoRA at
several ranks and FullFT, each over a grid of learning rates centred on the LRs `lora-lab plan`
recommends for the model (lrs.recommended_lr), several seeds, and a comment on every key.

    lora-lab new-experiment mine                                  # ./mine.yaml: tiny-llama on tiny-tulu
    lora-lab new-experiment mine --model llama-3.2-1b --data tulu3
    lora-lab new-experiment mine --from tiny/rank                 # a shipped experiment's grid, to edit
    lora-lab sweep mine.yaml --dry-run                            # then lora-lab sweep mine.yaml

Before the file is written it is read as `lora-lab sweep FILE --dry-run` reads it (every run of its
grid composed and checked); an existing file is never overwritten. docs/own-sweep.md goes on from
here to U-curves and a recommended rank and LR.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lora_lab.config import CONF_DIR, EXPERIMENTS_DIR, ConfigError, ModelConfig, RunConfig, compose, is_experiment_file
from lora_lab.flops import Arch, rank_unit, run_steps
from lora_lab.lrs import BASE_LR, LORA_MULTIPLIER, LR_EXPONENTS, SHORT_RUN_FACTOR, SHORT_RUN_STEPS, recommended_lr
from lora_lab.refine import lr_text, rounded
from lora_lab.sweep import expand

# LoRA ranks offered, each times the model's rank unit (MoE: the active experts) and at most half the
# hidden size (the adapted matrices are no wider than a few hidden sizes: higher ranks add nothing).
RANKS = (1, 4, 16, 64, 256)
# Five LRs per arm in half-decade steps: two decades centred on the recommendation.
LR_STEPS = (-2, -1, 0, 1, 2)
LR_STEP = 10**0.5
# Seeds of a tiny model's grid (minutes here); at the paper's scale one, to be raised before verdicts.
TINY_SEEDS, OTHER_SEEDS = "0,1,2", "0"
# Base models ship no chat template: the project's template of the model's family (data.chat_template).
CHAT_TEMPLATES = {"llama": "llama3", "qwen": "chatml"}
COMMENT_COL = 32


@dataclass
class Start:
    """What the file starts from: its model and data presets (or a model name) and, with --from, the
    shipped experiment's settings and grid."""

    model_preset: str | None
    model_name: str | None
    data: str
    fixed: dict
    run: dict
    sweeper: dict | None
    source: str | None


def _presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def lr_grid(center: float) -> list[float]:
    """Five LRs, half a decade apart, centred on `center` (2 significant digits)."""
    return [rounded(center * LR_STEP**k) for k in LR_STEPS]


def _csv(values: list) -> str:
    return ",".join(lr_text(v) if isinstance(v, float) else str(v) for v in values)


def _shipped(source: str) -> dict:
    path = Path(source) if is_experiment_file(source) else EXPERIMENTS_DIR / f"{source}.yaml"
    if not path.is_file():
        names = sorted(str(p.relative_to(EXPERIMENTS_DIR).with_suffix("")) for p in EXPERIMENTS_DIR.glob("*/*.yaml"))
        raise ConfigError(f"--from {source}: no such experiment; choose one of {', '.join(names)}")
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    if not isinstance(raw, dict):
        raise ConfigError(f"--from {source}: {path} is not a mapping of config keys")
    return raw


def start(source: str | None, model: str | None, data: str | None) -> Start:
    """The model, data and (with `source`) settings and grid the file starts from; ConfigError for
    an unknown preset, model name or experiment."""
    raw = _shipped(source) if source else {}
    presets: dict[str, str] = {}
    for entry in raw.get("defaults") or []:
        if isinstance(entry, dict):
            for key, value in entry.items():
                presets[key.replace("override", "").strip().lstrip("/")] = str(value)
    data = data or presets.get("data") or "tiny-tulu"
    if data not in _presets("data"):
        raise ConfigError(f"--data {data}: no such data preset; choose one of {', '.join(_presets('data'))} "
                          "(your own rows: the preset of their schema, then data.path in the file)")
    model_preset, model_name = presets.get("model") or "tiny-llama", None
    if model:
        if model in _presets("model"):
            model_preset = model
        else:
            ModelConfig(name=model)  # a hub id or a local directory, else the one-line error naming model.name
            model_preset, model_name = None, model
    fixed = {k: v for k, v in raw.items() if k not in ("defaults", "hydra", "run")}
    run = {k: v for k, v in (raw.get("run") or {}).items() if k != "experiment"}
    sweeper = (raw.get("hydra") or {}).get("sweeper") if source else None
    return Start(model_preset, model_name, data, fixed, run, sweeper, source)


def _yaml(node: Any, indent: int) -> list[str]:
    text = yaml.safe_dump(node, sort_keys=False, default_flow_style=False, width=100)
    return [" " * indent + line for line in text.splitlines()]


def _commands(pairs: list[tuple[str, str]]) -> list[str]:
    """Comment lines of commands, each with what it does in an aligned column."""
    width = max(len(c) for c, _ in pairs)
    return [f"#   {c.ljust(width)}   {what}" for c, what in pairs]


def _kv(indent: int, key: str, value: Any = "", comment: str = "") -> str:
    """`key: value`, indented, with its comment at COMMENT_COL (or two spaces after a long line)."""
    text = f"{' ' * indent}{key}:" + (f" {value}" if value != "" else "")
    return f"{text.ljust(COMMENT_COL - 2)}  # {comment}" if comment else text


def render(name: str, path: Path, s: Start) -> str:
    """The experiment file's text: settings, arms and LR grids, each with a comment."""
    cfg = compose([f"model={s.model_preset}" if s.model_preset else f"model.name={s.model_name}", f"data={s.data}"])
    arch = Arch.of(cfg.model)
    tiny = cfg.model.name.startswith("tiny-")
    steps = run_steps(cfg, cfg.data.num_examples)
    try:
        lora_lr, full_lr, why = recommended_lr(cfg.model, "lora", steps), recommended_lr(cfg.model, "full"), ""
    except ConfigError as exc:
        if s.sweeper is None:
            raise ConfigError(f"--model {cfg.model.name}: no recommended LR ({exc}); start from a shipped grid with "
                              "--from <experiment> and set the LRs yourself") from None
        lora_lr = full_lr = None
        why = str(exc)
    ask = f"lora-lab plan model={s.model_preset}" if s.model_preset else f"lora-lab plan model.name={s.model_name}"
    lines = [
        "# @package _global_",
        f"# {name}: {cfg.model.name} on {cfg.data.name}, LoRA at several ranks and full fine-tuning (FullFT),",
        "# each over a grid of learning rates. Written by `lora-lab new-experiment`"
        + (f" from {s.source}'s" if s.source else ""),
        ("# settings and grid; edit it, then" if s.source else "# edit it, then"),
        *_commands([(f"lora-lab sweep {path} --dry-run", "the runs of the grid and their states; nothing runs"),
                    (f"lora-lab plan experiment={path}", "parameters, FLOPs and GPU-hours of the grid"),
                    *([] if tiny else [(f"lora-lab gpus +experiments={path}", "GPU memory of a run, GPUs it needs"),
                                       (f"lora-lab fetch {path}", "its model and data into the caches, for offline nodes")]),
                    (f"lora-lab sweep {path}", "run it here (a cluster: launcher=slurm cluster=<profile>)"),
                    (f"lora-lab analyze {cfg.run.root}/{name}", "U-curves, optimal_lr.csv and the report")]),
        "# A sweep skips the runs that finished and resumes unfinished ones: the same command continues it.",
        "# From here to a rank and an LR: docs/own-sweep.md.",
        "",
        "defaults:",
    ]
    if s.model_preset:
        lines.append(_kv(2, "- override /model", s.model_preset, "a preset of conf/model/ (or model.name below)"))
    lines += [_kv(2, "- override /data", s.data, "a preset of conf/data/: the rows' schema and source"), "  - _self_", ""]
    if s.model_name:
        lines += ["model:", _kv(2, "name", s.model_name, "a hub id (org/name) or a local model directory"), ""]
    own_rows = "  # your own rows, in the data preset's schema (docs/data.md)"
    path_line = "  # path: my_rows.jsonl".ljust(COMMENT_COL - 2) + own_rows
    if s.source:
        where = s.source if is_experiment_file(s.source) else f"experiments/{s.source}.yaml"
        lines.append(f"# {s.source}'s fixed settings ({where} says why each is set).")
        lines += _yaml(s.fixed, 0) if s.fixed else []
        if not s.fixed.get("data"):
            lines += ["# data:", "#   path: my_rows.jsonl".ljust(COMMENT_COL - 2) + own_rows]
        lines.append("")
    else:
        length = f": {steps} steps of optim.batch_size" if steps else ""
        lines += ["data:",
                  _kv(2, "num_examples", cfg.data.num_examples, f"training examples, one epoch{length}"),
                  _kv(2, "max_seq_len", cfg.data.max_seq_len, "tokens; longer rows are cut (data.truncation)"),
                  path_line]
        if not tiny and arch.family in CHAT_TEMPLATES:
            lines.append(_kv(2, "chat_template", CHAT_TEMPLATES[arch.family],
                             "base models ship none: the project's, with exact assistant masks"))
        lines += ["",
                  "optim:",
                  _kv(2, "batch_size", cfg.optim.batch_size, "sequences per step (LoRA pays more for large batches: C3)"),
                  "",
                  "train:",
                  _kv(2, "eval_every", 0, "held-out loss at the end only: U-curves read the final train loss"),
                  _kv(2, "checkpoint_every", 50, "steps between checkpoints: a killed run resumes from its last"),
                  ""]
    lines += ["run:", _kv(2, "experiment", name, f"runs go to <run.root>/{name}/<run_id>/ (run.root: runs)")]
    lines += _yaml(s.run, 2) if s.run else []
    lines += ["", "hydra:", "  sweeper:"]
    if s.sweeper is not None:
        if lora_lr is not None:
            lines.append(f"    # {ask} recommends LoRA {lr_text(lora_lr)}, FullFT {lr_text(full_lr)}; "
                         f"these LR grids are {s.source}'s")
        elif why:
            lines.append(f"    # no recommended LR for this model ({why}); these LR grids are {s.source}'s")
        return "\n".join(lines + _yaml(s.sweeper, 4)) + "\n"
    unit = rank_unit(cfg.model, "all")
    ranks = [r * unit for r in RANKS if r * unit <= max(unit, min(RANKS[-1], arch.hidden // 2))]
    seeds = TINY_SEEDS if tiny else OTHER_SEEDS
    short = (f", x{SHORT_RUN_FACTOR:g} for a run of <= {SHORT_RUN_STEPS} steps ({steps})"
             if steps is not None and steps <= SHORT_RUN_STEPS else "")
    law = f"{BASE_LR:g} x (2000/{arch.hidden})^{LR_EXPONENTS[arch.family]}"
    lines += [
        _kv(4, "params", "", "axes every arm shares"),
        _kv(6, "train.seed", seeds, "their spread is the noise gaps are judged against" if "," in seeds
            else "one for a first look; 0,1,2 before judging gaps (their spread is the noise)"),
        _kv(4, "grids", "", "the arms: each arm's runs are the product of its axes and params"),
        "      lora:",
        "        method: lora",
        _kv(8, "lora.rank", _csv(ranks), "alpha 32 at every rank; all layers and lm_head"),
        f"        # {ask}: LoRA {lr_text(lora_lr)}, {LORA_MULTIPLIER:g}x FullFT's{short};",
        "        # five LRs half a decade apart around it",
        f"        optim.lr: {_csv(lr_grid(lora_lr))}",
        "      full:",
        "        method: full",
        f"        # {ask}: FullFT {lr_text(full_lr)} = {law}",
        f"        optim.lr: {_csv(lr_grid(full_lr))}",
        _kv(4, "quick", "", f"lora-lab sweep {path} --quick: one seed, two ranks"),
        _kv(6, "train.seed", '"0"'),
        _kv(6, "lora.rank", _csv([ranks[0], ranks[min(2, len(ranks) - 1)]])),
    ]
    if tiny:
        lines.append(_kv(6, "data.num_examples", '"512"'))
    lines += ["# An optimum at an arm's lowest or highest LR is not bracketed: `--refine` adds LRs around each",
              "# arm's optimum until it is (hydra.sweeper.refine_factor: how narrow it must get)."]
    return "\n".join(lines) + "\n"


def new_experiment(name: str, out: Path | None = None, source: str | None = None, model: str | None = None,
                   data: str | None = None) -> tuple[Path, int]:
    """Write the experiment file (default ./<name>.yaml) after checking it as `sweep --dry-run` does;
    returns (its path, the number of runs of its grid). ConfigError for a bad name, an existing file
    or a file the sweep would refuse."""
    try:
        RunConfig(experiment=name)  # the name of its runs' directory
    except ConfigError as exc:
        raise ConfigError(f"NAME {name!r}: names its runs' directory (run.experiment): {str(exc).split(': ', 1)[1]}") from None
    path = Path(out) if out is not None else Path(f"{name}.yaml")
    if not is_experiment_file(str(path)):
        raise ConfigError(f"--out {path}: an experiment file ends in .yaml; give --out {path}.yaml")
    if path.exists():
        raise ConfigError(f"{path}: exists; give another NAME or --out PATH, or delete the file first")
    text = render(name, path, start(source, model, data))
    path.parent.mkdir(parents=True, exist_ok=True)
    trial = path.with_name(f".{path.stem}.{os.getpid()}.yaml")
    try:
        trial.write_text(text)
        runs = len(expand(str(trial)))
        with open(path, "x") as f:  # never over a file written meanwhile
            f.write(text)
    except FileExistsError:
        raise ConfigError(f"{path}: exists; give another NAME or --out PATH, or delete the file first") from None
    finally:
        trial.unlink(missing_ok=True)
    return path, runs


def new_experiment_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="lora-lab new-experiment", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the experiment's name: its runs go to <run.root>/NAME/ (letters, digits, . - _ /)")
    p.add_argument("--from", dest="source", metavar="EXPERIMENT",
                   help="start from a shipped experiment's settings and grid (e.g. tiny/rank) instead of the LR law's")
    p.add_argument("--model", help="a conf/model preset (tiny-llama, llama-3.1-8b, ...), a hub id or a local directory "
                                   "(default tiny-llama, or --from's)")
    p.add_argument("--data", help="a conf/data preset (tiny-tulu, tulu3, ...; default tiny-tulu, or --from's)")
    p.add_argument("--out", type=Path, help="where to write it (default ./NAME.yaml); never overwritten")
    args = p.parse_args(argv)
    path, runs = new_experiment(args.name, args.out, args.source, args.model, args.data)
    print(f"wrote {path}: {runs} runs; next: lora-lab sweep {path} --dry-run (docs/own-sweep.md)")
    return 0
