"""What a LoRA job costs and whether LoRA can match FullFT on it, before any GPU hour is spent:
the data's size and information, the capacity check (claim C9), and the command `lora-lab plan`,
which prints them with the recommended learning rates. Parameter counts, FLOPs and the model
lookup live in lora_lab/flops.py and are re-exported here; the learning rates (the law, the
tinker-cookbook sweep table, the fits and `lora-lab fit-lr`) live in lora_lab/lrs.py.

    lora-lab plan model=llama-3.1-8b data=tulu3 lora.rank=128 gpu=h100 mfu=0.4
    lora-lab plan data=tiny-facts lora.rank=1 experiment=tiny/rank
    lora-lab plan model=tiny-llama-w256 lr_fit=lr_fit.json   # a fit of `lora-lab fit-lr --save`
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_lab.config import MAX_RANK, Config, ConfigError

# Re-exported: plan is the one import for planning (lora_lab.flops holds the model arithmetic).
from lora_lab.flops import (GPU_PEAK_TFLOPS, Arch, Flops, ModelLike, SamplingCost, flops_per_token,  # noqa: F401
                            flops_ratio, full_param_count, gpu_hours, hf_config, lora_param_count, paper_flops_ratio,
                            rank_unit, rl_episodes, rl_evals, rl_sampling_cost, run_cost, run_steps, sampling_flops)
from lora_lab.lrs import (BASE_LR, LORA_MULTIPLIER, LR_EXPONENTS, PAPER_LORA_MULTIPLIER, SHORT_RUN_FACTOR, SHORT_RUN_STEPS,
                          SWEEP_AT_GRID_TOP, SWEEP_SETTING, LRLaw, load_lr_fits, recommended_lr, sweep_lr)

# C9: ~2 bits stored per trained parameter; policy-gradient RL gives ~1 bit per episode.
BITS_PER_PARAM = 2.0
RL_BITS_PER_EPISODE = 1.0
PAPER_RANKS = tuple(2**i for i in range(10))  # 1 .. 512


# ----------------------------------------------------------------------------- the data and C9


@dataclass
class DataStats:
    """Token counts of a training set and, where measured, the bits its targets hold."""

    rows: int | None  # training rows (None: unknown)
    mean_len: float  # tokens per row the model reads
    attn_len: float  # E[len^2] / E[len]: the length that gives the mean attention FLOPs per token
    target_per_row: float | None  # assistant (loss) tokens per row
    note: str  # how the lengths were found
    bits_per_row: float | None = None
    bits_how: str = ""  # how the bits were found
    bits_bound: bool = False  # the bits are a code length of the targets: an upper bound of their information
    prompt_len: float | None = None  # task=rl: tokens of the prompt the policy is sampled from

    @property
    def bits(self) -> float | None:
        return None if self.bits_per_row is None or self.rows is None else self.bits_per_row * self.rows

    @property
    def target_tokens(self) -> float | None:
        return None if self.target_per_row is None or self.rows is None else self.target_per_row * self.rows


def measure_data(cfg: Config, sample: int = 64, bits: bool = True) -> DataStats:
    """Lengths from `sample` training rows tokenized as a run tokenizes them (task=rl: also the
    prompts as RL encodes them); with `bits`, also the base model's summed NLL of their targets in
    bits (one forward pass, no training). Totals scale the sample's means by the number of training
    rows. Where the data or the tokenizer cannot be read here, every row (and prompt) is taken at
    data.max_seq_len (an upper bound)."""
    import torch

    from lora_lab.data import IGNORE_INDEX, DataError, collate, load_rows, tokenize, use_chat_template
    from lora_lab.models import build_model, load_tokenizer, resolve_device
    from lora_lab.train import batch_nll

    if sample < 1:
        raise ConfigError(f"sample={sample}: must be >= 1")
    try:
        train_rows, _ = load_rows(cfg.data)
        tok = use_chat_template(load_tokenizer(cfg.model.name, cfg.model.trust_remote_code, cfg.model.revision), cfg.data)
    except (DataError, OSError, ValueError) as exc:
        n = cfg.data.max_seq_len
        return DataStats(cfg.data.num_examples, n, n, None, f"upper bound, every row at data.max_seq_len={n} "
                         f"(not measured: {str(exc).splitlines()[0].split('; ')[0]})",
                         prompt_len=float(n) if cfg.task == "rl" else None)
    split = tokenize([train_rows[i] for i in range(min(sample, len(train_rows)))], tok, cfg.data.max_seq_len,
                     f"plan: data.{cfg.data.name} sample")
    lens = [len(x) for x in split.ids]
    targets = sum(int((y[1:] != IGNORE_INDEX).sum()) for y in split.labels)
    stats = DataStats(len(train_rows), sum(lens) / len(lens), sum(n * n for n in lens) / sum(lens), targets / len(lens),
                      f"tokenized {len(lens)} of {len(train_rows):,} training rows")
    if cfg.task == "rl":
        from lora_lab.rewards import reward_task
        from lora_lab.rl import encode_prompt

        task = reward_task(cfg.data.name)
        prompts = [len(encode_prompt(train_rows[i], tok, task, cfg.rl.instruction).ids)
                   for i in range(min(sample, len(train_rows)))]
        kept = [n for n in prompts if n <= cfg.data.max_seq_len] or [cfg.data.max_seq_len]  # longer ones are skipped
        stats.prompt_len = sum(kept) / len(kept)
    if not bits:
        return stats
    try:
        device = resolve_device(cfg.train.device)
        model, _ = build_model(cfg.model, device)
    except (OSError, ValueError) as exc:
        stats.bits_how = f"no base-model pass ({str(exc).splitlines()[0]})"
        return stats
    model.eval()
    order, nats = sorted(range(len(lens)), key=lens.__getitem__), 0.0
    with torch.no_grad():
        for i in range(0, len(order), 8):
            batch = {k: v.to(device) for k, v in collate(split, order[i:i + 8], tok.pad_token_id).items()}
            nats += batch_nll(model, batch)[0].item()
    stats.bits_per_row = nats / math.log(2) / len(lens)
    stats.bits_how, stats.bits_bound = f"base-model NLL of the targets of {len(lens)} rows, an upper bound", True
    return stats


def bits_from_run(path: str | Path) -> tuple[float, float, int]:
    """(bits, target tokens, rows) of a run's first epoch: its summed train loss in bits, a
    prequential code length of the rows it saw (each batch is scored before the model trains on it)."""
    from lora_lab.runs import RunDir

    rd = RunDir(path)
    lines = [r for r in rd.metrics()
             if "train_loss" in r and r.get("epoch", 0) == 0 and r.get("target_tokens")]
    if not lines:
        raise ConfigError(f"from_run={path}: no first-epoch train lines with target_tokens in its metrics.jsonl")
    batch = rd.config().optim.batch_size
    return (sum(r["train_loss"] * r["target_tokens"] for r in lines) / math.log(2),
            float(sum(r["target_tokens"] for r in lines)), len(lines) * batch)


@dataclass
class Capacity:
    """C9: the information the data holds against what the adapter can store."""

    bits: float | None  # information to store (None: unknown)
    how: str
    params: int  # LoRA parameters of the configured rank and layers
    min_rank: int | None  # smallest paper rank (a power of 2) whose capacity covers `bits`
    upper_bound: bool = False  # `bits` bounds the information from above (then "fits" is the sure verdict)

    @property
    def capacity_bits(self) -> float:
        return BITS_PER_PARAM * self.params

    @property
    def fits(self) -> bool | None:
        return None if self.bits is None else self.bits <= self.capacity_bits


def capacity_check(cfg: Config, *, bits: float | None = None, episodes: int | None = None,
                   stats: DataStats | None = None, sample: int = 64) -> Capacity:
    """Is LoRA of rank cfg.lora.rank on cfg.lora.layers (cfg.lora.unembed) big enough for the data?

    The information to store: `bits` if given; for RL (task=rl, or `episodes` given) ~1 bit per
    episode, the paper's estimate for policy gradient; otherwise the data's bits (`stats`, else
    `measure_data`: the base model's summed NLL of the training targets from a sample, scaled to the
    set). That NLL bounds from above what the data can teach: the targets' entropy given the prompts
    is at most their cross-entropy under any model (Gibbs' inequality). It is loose where the base
    model has not seen the chat format; a run's first-epoch loss (`bits_from_run`) is tighter.
    Capacity: ~2 bits per LoRA parameter (the paper's figure, after Allen-Zhu and Li's knowledge-
    capacity law, 2024)."""
    model, lc, given = cfg.model, cfg.lora, bits is not None
    if given:
        how = "given"
    elif episodes is not None or cfg.task == "rl":
        if episodes is None:
            episodes = rl_episodes(cfg, run_steps(cfg, (stats or measure_data(cfg, sample, bits=False)).rows))
        bits = None if episodes is None else RL_BITS_PER_EPISODE * episodes
        how = f"RL, ~1 bit x {episodes:,} episodes" if episodes else "RL, number of episodes unknown"
    else:
        stats = stats or measure_data(cfg, sample)
        bits = stats.bits
        how = (f"{bits / stats.target_tokens:.2f} bits/target token x {stats.target_tokens:,.0f} target tokens: "
               f"{stats.bits_how}" if bits is not None and stats.target_tokens
               else stats.bits_how or "the data or its tokenizer cannot be read here")
    unit = rank_unit(model, lc.layers)
    per_rank = lora_param_count(model, unit, lc.layers, lc.unembed) / unit  # counts are linear in rank
    min_rank = None if bits is None else next(
        (r for r in PAPER_RANKS if r % unit == 0 and BITS_PER_PARAM * per_rank * r >= bits), None)
    bound = bits is not None and not given and cfg.task != "rl" and episodes is None and bool(stats and stats.bits_bound)
    return Capacity(bits, how, lora_param_count(model, lc.rank, lc.layers, lc.unembed), min_rank, bound)


# ----------------------------------------------------------------------------- lora-lab plan

PLAN_USAGE = """usage: lora-lab plan [key=value ...]

Trainable parameters per rank x layer set, recommended LRs, FLOPs per token, the capacity verdict
(C9) and the cost of the run (task=rl: the learner's and the sampling's), or with
experiment=<scale>/<figure> of that experiment's whole grid.
Hydra overrides as for `lora-lab train` (model=llama-3.1-8b data=tulu3 lora.rank=16 ...), plus:
  gpu=h100|h200|a100   GPU for GPU-hours (bf16 dense peak: h100 989, h200 989, a100 312 TFLOPS)
  mfu=0.4              model-FLOPs utilisation assumed for GPU-hours
  experiment=NAME      an experiment of experiments/ (e.g. tiny/rank) or an experiment file
                       (my_sweep.yaml): the cost of its grid
  sample=64            training rows tokenized and passed through the base model for the estimates
  ranks=1,4,16,64,256  ranks of the parameter table (lora.rank is always added)
  from_run=DIR         data bits from a finished run's first-epoch train loss (tighter than the
                       base model's NLL; take a FullFT run on the same data)
  bits_per_token=B     information per target token, where no base-model pass is possible here
  lr_fit=PATH          your own LR law (`lora-lab fit-lr --save PATH`), shown beside the published ones
"""
_PLAN_KEYS = {"gpu": str.lower, "mfu": float, "experiment": str, "sample": int, "from_run": str,
              "bits_per_token": float, "ranks": lambda v: tuple(int(r) for r in v.split(",")), "lr_fit": str}


def _plan_args(argv: Sequence[str]) -> tuple[dict, list[str]]:
    o: dict = {"gpu": "h100", "mfu": 0.4, "experiment": None, "sample": 64, "ranks": (1, 4, 16, 64, 256),
               "from_run": None, "bits_per_token": None, "lr_fit": None}
    rest = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in _PLAN_KEYS:
            rest.append(arg)
            continue
        try:
            o[key] = _PLAN_KEYS[key](value)
        except ValueError:
            raise ConfigError(f"{arg}: not a valid {key} (see lora-lab plan --help)") from None
    gpu_hours(0.0, o["gpu"], o["mfu"])  # validates gpu and mfu
    if not o["ranks"] or any(not 1 <= r <= MAX_RANK for r in o["ranks"]):
        raise ConfigError(f"ranks={','.join(map(str, o['ranks']))}: each must be in 1..{MAX_RANK}")
    if o["bits_per_token"] is not None and not o["bits_per_token"] > 0:
        raise ConfigError(f"bits_per_token={o['bits_per_token']}: must be > 0")
    if o["lr_fit"] is not None:
        o["lr_fit"] = (o["lr_fit"], load_lr_fits(o["lr_fit"]))
    if o["from_run"]:
        from lora_lab.runs import RunDir  # here, not at the top: `lora-lab plan` imports torch only when it must

        if not RunDir(o["from_run"]).metrics_path.is_file():
            raise ConfigError(f"from_run={o['from_run']}: no metrics.jsonl there; give a run directory")
    return o, rest


def _si(x: float) -> str:
    for unit, k in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= k:
            return f"{x / k:.3g}{unit}"
    return f"{x:.3g}"


def _flops(f: Flops) -> str:
    return f"{_si(f.total)} = {_si(f.forward)} fwd + {_si(f.input_grad)} input-grad + {_si(f.weight_grad)} weight-grad"


def plan_main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(PLAN_USAGE, end="")
        return 0
    from transformers.utils import logging as hf_logging

    from lora_lab.config import compose

    hf_logging.disable_progress_bar()
    o, overrides = _plan_args(argv)
    grid: list[Config] = []
    if o["experiment"]:
        from lora_lab.sweep import expand

        grid = expand(o["experiment"], overrides)
    cfg = next((c for c in grid if c.method == "lora"), grid[0]) if grid else compose(overrides)
    lc, arch, gpu, mfu = cfg.lora, Arch.of(cfg.model), o["gpu"], o["mfu"]
    stats = measure_data(cfg, o["sample"], bits=cfg.task != "rl" and not o["from_run"])
    if o["from_run"]:
        bits, targets, seen = bits_from_run(o["from_run"])
        stats.bits_per_row, stats.target_per_row = bits / seen, targets / seen
        stats.bits_how, stats.bits_bound = f"first-epoch train loss of {seen:,} rows in {o['from_run']}", True
    elif stats.bits_per_row is None and o["bits_per_token"] and cfg.task != "rl":
        stats.target_per_row = stats.target_per_row or stats.mean_len
        stats.bits_per_row = o["bits_per_token"] * stats.target_per_row
        stats.bits_how = f"bits_per_token={o['bits_per_token']:g} given"
    cap = capacity_check(cfg, stats=stats)

    def line(label: str, text: str) -> None:
        print(textwrap.fill(text, 118, initial_indent=f"{label:<24}", subsequent_indent=" " * 26))

    line("model", f"{cfg.model.name}: {arch.model_type}, hidden {arch.hidden}, {arch.layers} layers"
         + (f", {arch.experts} experts ({arch.active} active)" if arch.experts else "")
         + f", {full_param_count(cfg.model):,} parameters")
    line("data", f"{cfg.data.name}: {f'{stats.rows:,}' if stats.rows else '?'} training rows, {stats.mean_len:.0f} "
         f"tokens/row" + (f" ({stats.target_per_row:.0f} targets)" if stats.target_per_row else "") + f"; {stats.note}")
    ranks = sorted(set(o["ranks"]) | {lc.rank})
    print(f"\n{'trainable parameters':<24}" + "".join(f"{'r=' + str(r):>9}" for r in ranks))
    for layers, unembed in (("attn", False), ("mlp", False), ("all", False), ("all", True)):
        unit = rank_unit(cfg.model, layers)
        cells = [_si(lora_param_count(cfg.model, r, layers, unembed)) if r % unit == 0 else "-" for r in ranks]
        print(f"{'  lora ' + layers + (' + unembed' if unembed else ''):<24}" + "".join(f"{c:>9}" for c in cells))
    print(f"{'  full':<24}{_si(full_param_count(cfg.model)):>9}")
    if cap.bits is not None:
        unit = rank_unit(cfg.model, lc.layers)
        fits = ["-" if r % unit else "yes" if BITS_PER_PARAM * lora_param_count(cfg.model, r, lc.layers, lc.unembed)
                >= cap.bits else "no" for r in ranks]
        print(f"{'  fits the data (' + lc.layers + ')':<24}" + "".join(f"{c:>9}" for c in fits))
    print()
    steps = run_steps(cfg, stats.rows)
    for i, text in enumerate(_lr_lines(cfg, arch, steps, o["lr_fit"])):
        line("" if i else "learning rate (SFT)", text)
    try:
        fl = flops_per_token(cfg.model, "lora", lc.rank, lc.layers, stats.attn_len, lc.unembed)
        ff = flops_per_token(cfg.model, "full", seq_len=stats.attn_len)
        line("FLOPs per token", f"lora r={lc.rank} {lc.layers}: {_flops(fl)}")
        line("", f"full: {_flops(ff)}; lora/full {fl.total / ff.total:.3f} (attention length {stats.attn_len:.0f})")
    except ConfigError as exc:
        line("FLOPs per token", f"n/a: {exc}")
    if cap.bits is None:
        line("capacity (C9)", f"unknown ({cap.how}); give bits_per_token=B or from_run=DIR")
    else:
        verdict = ("fits: in the low-regret regime" if cap.fits else
                   "may be capacity-bound (the data estimate is an upper bound)" if cap.upper_bound else
                   "capacity-bound: expect LoRA to fall behind FullFT")
        line("capacity (C9)", f"data {_si(cap.bits)}bit ({cap.how})")
        line("", f"lora r={lc.rank} {lc.layers}: {_si(cap.params)} params x {BITS_PER_PARAM:g} bits = "
             f"{_si(cap.capacity_bits)}bit: {verdict}; " + (f"smallest sufficient rank {cap.min_rank}" if cap.min_rank
                                                           else f"no rank up to {MAX_RANK} suffices"))
    at = f"({gpu}, MFU {mfu:g})"
    if not grid:
        steps, tokens, flops = run_cost(cfg, stats.rows, stats.mean_len, stats.attn_len)
        if steps is None:
            line("this run", "length unknown: set train.max_steps or data.num_examples")
        elif cfg.task == "rl":
            sampled = rl_sampling_cost(cfg, steps, _prompt_len(cfg, stats))
            line(f"learner ({cfg.method})", f"{rl_episodes(cfg, steps):,} episodes x {stats.mean_len:.0f} tokens = "
                 f"{_si(tokens)} tokens: {flops:.3g} FLOPs")
            line(f"sampling ({cfg.rl.sampler})", _sampling_text(cfg, steps, _prompt_len(cfg, stats), sampled))
            total = flops + sampled.total
            line(f"this run ({cfg.method})", f"learner {flops:.3g} + sampling {sampled.total:.3g} = {total:.3g} FLOPs = "
                 f"{gpu_hours(total, gpu, mfu):.3g} GPU-hours {at}")
        else:
            line(f"this run ({cfg.method})", f"{steps:,} steps x {cfg.optim.batch_size} x {stats.mean_len:.0f} tokens = "
                 f"{_si(tokens)} tokens: {flops:.3g} FLOPs = {gpu_hours(flops, gpu, mfu):.3g} GPU-hours {at}")
        return 0
    measured: dict[str, DataStats] = {}
    totals: dict[str, list[float]] = {}
    for c in grid:
        key = f"{c.model.name}|{sorted(vars(c.data).items())}"
        if key not in measured:
            same = (c.model.name, c.data) == (cfg.model.name, cfg.data)
            measured[key] = stats if same else measure_data(c, o["sample"], bits=False)
        s = measured[key]
        steps, tokens, flops = run_cost(c, s.rows, s.mean_len, s.attn_len)
        if steps is None:
            raise ConfigError(f"experiment={o['experiment']}: a run has no length; set train.max_steps or data.num_examples")
        sampled = rl_sampling_cost(c, steps, _prompt_len(c, s)).total if c.task == "rl" else 0.0
        t = totals.setdefault(c.method, [0, 0.0, 0.0, 0.0])
        t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + tokens, t[2] + flops + sampled, t[3] + sampled
    flops, sampled = sum(t[2] for t in totals.values()), sum(t[3] for t in totals.values())
    parts = ", ".join(f"{t[0]:.0f} {m}: {gpu_hours(t[2], gpu, mfu):.3g} GPU-h" for m, t in sorted(totals.items()))
    of_which = f" (sampling {sampled:.3g} of them)" if sampled else ""
    line("experiment", f"{o['experiment']}: {len(grid)} runs ({parts}); {_si(sum(t[1] for t in totals.values()))} tokens, "
         f"{flops:.3g} FLOPs{of_which} = {gpu_hours(flops, gpu, mfu):.3g} GPU-hours {at}")
    return 0


def _lr_lines(cfg: Config, arch: Arch, steps: int | None,
              lr_fit: tuple[str, dict[str, dict[str, LRLaw]]] | None) -> list[str]:
    """The recommended LRs side by side, each with its source: the law, the cookbook's sweep where it
    covers the model, and the user's own fit (lr_fit=)."""
    try:
        short = f" x{SHORT_RUN_FACTOR:g} ({steps} <= {SHORT_RUN_STEPS} steps)" if steps and steps <= SHORT_RUN_STEPS else ""
        law = recommended_lr(cfg.model, "lora", steps)
        lines = [f"law: lora {law:.2e}, full {recommended_lr(cfg.model, 'full'):.2e} = {BASE_LR:g} x "
                 f"(2000/{arch.hidden})^{LR_EXPONENTS[arch.family]} ({arch.family}), lora x{LORA_MULTIPLIER:g}{short} "
                 f"(the paper's form with tinker-cookbook get_lr's constants; the paper's LoRA/FullFT fit: "
                 f"{PAPER_LORA_MULTIPLIER})"]
    except ConfigError as exc:
        law, lines = None, [f"law: n/a: {exc}"]
    swept = sweep_lr(cfg.model)
    if swept:
        hub_id, lr = swept
        bound = " (the top of its LR grid: a lower bound)" if hub_id in SWEEP_AT_GRID_TOP else ""
        versus = f", {lr / law:.2g}x the law's" if law else ""
        lines.append(f"sweep: lora {lr:.2e} = the best LoRA LR of {hub_id} in tinker-cookbook's later LoRA-only sweep "
                     f"({SWEEP_SETTING}){bound}{versus}; full {lr / LORA_MULTIPLIER:.2e} derived as lora / "
                     f"{LORA_MULTIPLIER:g} (the cookbook's LoRA/FullFT)")
    if lr_fit:
        path, fits = lr_fit
        laws = fits.get(arch.family, {})
        if not laws:
            lines.append(f"your fit: none for {arch.family} in lr_fit={path} (it holds {', '.join(sorted(fits))})")
        else:
            parts = []
            for method, f in sorted(laws.items(), key=lambda kv: kv[0] != "lora"):
                iv = f.lr_interval(arch.hidden)
                parts.append(f"{method} {f.lr(arch.hidden):.2e} " + (f"[{iv[0]:.2e}, {iv[1]:.2e}]" if iv else "[n/a]"))
            level = next(iter(laws.values())).level
            out = any(f.extrapolates(arch.hidden) for f in laws.values())
            lines.append(f"your fit: {', '.join(parts)} (lr_fit={path}: {arch.family}, {level:.0%} intervals of the "
                         f"fitted law; hidden {arch.hidden} {'outside' if out else 'within'} the fitted "
                         f"{min(f.hidden[0] for f in laws.values())}..{max(f.hidden[1] for f in laws.values())}"
                         f"{': extrapolated' if out else ''})")
    return lines


def _prompt_len(cfg: Config, stats: DataStats) -> float:
    """Mean RL prompt length: measured, else data.max_seq_len (the longest prompt a run keeps)."""
    return stats.prompt_len if stats.prompt_len is not None else float(cfg.data.max_seq_len)


def _sampling_text(cfg: Config, steps: int, prompt_len: float, s: SamplingCost) -> str:
    rl = cfg.rl
    prefill = "once per sample" if rl.sampler == "generate" else "once per group"
    eval_new = rl.eval_max_new_tokens or rl.max_new_tokens
    held = f"({cfg.data.eval_size} test + {rl.val_size} validation)" if rl.val_size else f"{cfg.data.eval_size}"
    return (f"{steps:,} steps x {rl.prompts_per_step} prompts x {rl.group_size} samples of up to {rl.max_new_tokens} tokens "
            f"after {prompt_len:.0f}-token prompts (KV cache, prompt prefilled {prefill}) = {_si(s.train_tokens)} tokens: "
            f"{s.train:.3g} FLOPs forward; held-out: {s.evals} evals x {held} greedy x {eval_new} tokens: "
            f"{s.eval:.3g} FLOPs. Lengths at their limits (upper bounds); decoding is memory-bound, so its "
            f"GPU-hours at the training MFU are a lower bound")
