"""Learning rates: the law, the table, the fits, and the command `lora-lab fit-lr`.

    lora-lab fit-lr runs/tiny/analysis runs/paper/analysis/optimal_lr.csv   # after lora-lab analyze
    lora-lab fit-lr runs/tiny/analysis --save lr_fit.json
    lora-lab plan model=tiny-llama-w256 lr_fit=lr_fit.json   # the fit beside the law and the table

The law (`recommended_lr`). The paper ("LoRA Without Regret", Schulman and Thinking Machines Lab,
2025, section "Optimal learning rate") fits LR = M_LoRA (2000 / hidden)^(model_pow + LoRA_pow) over
14 Llama and Qwen models on Tulu3 and finds M_LoRA = 9.8 (the LoRA / FullFT LR ratio) and LoRA_pow
~ 0, but prints neither the base LR nor model_pow. Those come from Thinking Machines' public
tinker-cookbook (`tinker_cookbook.hyperparam_utils.get_lr`): FullFT LR = 5e-5 x (2000 / hidden)^p,
LoRA LR = 10 x that, p = 0.781 for Llama and 0.0775 for Qwen.

The table (`SWEEP_LORA_LR`, `sweep_lr`). The cookbook's later LoRA sweep of its model lineup
measured optima 2.0x to 2.8x that law for the paper's Qwen3 and Llama-3.2 models (1.05x for
Llama-3.1-8B, ~0.6x for Qwen3-32B).

The fits (`read_optimal_lr`, `fit_lr_law`, `fit_lr_method`). The law's form refitted by least
squares in log space to the optimal LRs of your own sweeps (the optimal_lr.csv of `lora-lab
analyze`), per model family: jointly (one p, LoRA = multiplier x FullFT) and each method alone (its
own M and p, with t intervals). `lora-lab fit-lr --save` writes the latter as JSON, and `lora-lab
plan` (lora_lab/plan.py) prints the law, the table and that fit side by side.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lora_lab.config import LAYER_SETS, ConfigError, ModelConfig
from lora_lab.flops import Arch, ModelLike, _preset_name

# tinker-cookbook: FullFT LR at hidden size 2000, the LoRA multiplier, and the per-family exponents.
BASE_LR = 5e-5
LORA_MULTIPLIER = 10.0
LR_EXPONENTS = {"llama": 0.781, "qwen": 0.0775}
PAPER_LORA_MULTIPLIER = 9.8  # the paper's fit of the LoRA / FullFT ratio
# C2: the ratio is about 15 rather than 10 for runs of 100 steps or fewer.
SHORT_RUN_STEPS, SHORT_RUN_FACTOR = 100, 15 / 10

# The best LoRA LR per model of tinker-cookbook's SFT sweep (tinker_cookbook/recipes/chat_sl/results/
# sft_sweep.md, main branch, 2026-08): LoRA only, on tulu3, batch 128, 780 steps, 2 to 6 LRs per model
# from 4e-5 (most: 4e-5, 1e-4, 3e-4, 1e-3, 3e-3) at 2 to 4 ranks (1..4 for the largest models, 4..128
# for those up to ~9B), scored by test NLL; the LR of the best (rank, LR) pair. The cookbook's pull
# request #605 proposed these values as `get_lr`'s lookup table in place of the law (with
# DeepSeek-V3.1 at -Base's 4e-4, before the sweep of it found 3e-4); `get_lr` on main still
# computes the law.
SWEEP_LORA_LR: dict[str, float] = {
    "meta-llama/Llama-3.2-1B": 1e-3,
    "meta-llama/Llama-3.2-3B": 1e-3,
    "meta-llama/Llama-3.1-8B": 3e-4,
    "meta-llama/Llama-3.1-8B-Instruct": 3e-4,
    "meta-llama/Llama-3.1-70B": 3e-4,
    "meta-llama/Llama-3.3-70B-Instruct": 3e-4,
    "Qwen/Qwen3-4B-Instruct-2507": 1e-3,
    "Qwen/Qwen3-8B": 1e-3,
    "Qwen/Qwen3-8B-Base": 1e-3,
    "Qwen/Qwen3-32B": 3e-4,
    "Qwen/Qwen3-30B-A3B": 1e-3,
    "Qwen/Qwen3-30B-A3B-Base": 1e-3,
    "Qwen/Qwen3-30B-A3B-Instruct-2507": 1e-3,
    "Qwen/Qwen3-235B-A22B-Instruct-2507": 3e-4,
    "Qwen/Qwen3-VL-30B-A3B-Instruct": 1e-3,
    "Qwen/Qwen3-VL-235B-A22B-Instruct": 3e-4,
    "Qwen/Qwen3.5-4B": 3e-4,
    "Qwen/Qwen3.5-9B": 3e-4,
    "Qwen/Qwen3.5-9B-Base": 3e-4,
    "Qwen/Qwen3.5-27B": 3e-4,
    "Qwen/Qwen3.5-35B-A3B": 3e-4,
    "Qwen/Qwen3.5-35B-A3B-Base": 3e-4,
    "Qwen/Qwen3.5-397B-A17B": 3e-4,
    "Qwen/Qwen3.6-27B": 3e-4,
    "Qwen/Qwen3.6-35B-A3B": 3e-4,
    "deepseek-ai/DeepSeek-V3.1": 3e-4,
    "deepseek-ai/DeepSeek-V3.1-Base": 4e-4,
    "moonshotai/Kimi-K2-Thinking": 3e-4,
    "moonshotai/Kimi-K2.5": 3e-4,
    "moonshotai/Kimi-K2.6": 3e-4,
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": 4e-4,
    "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16": 1e-3,
    "nvidia/NVIDIA-Nemotron-3-Ultra-550B-A55B-BF16": 3e-4,
    "openai/gpt-oss-20b": 1e-4,
    "openai/gpt-oss-120b": 3e-4,
}
# Their best LR is the largest of their grid: a lower bound of the optimum, not the optimum.
SWEEP_AT_GRID_TOP = frozenset({"meta-llama/Llama-3.3-70B-Instruct", "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-BF16",
                               "openai/gpt-oss-20b"})
SWEEP_SETTING = "tulu3, batch 128, 780 steps"
LR_FIT_LEVEL = 0.90  # the intervals of `lora-lab fit-lr`'s per-method fits


def recommended_lr(config_or_name: ModelLike, method: str = "lora", steps: int | None = None) -> float:
    """Constant Adam LR for SFT with alpha = 32 (the paper's setting).

    FullFT: 5e-5 x (2000 / hidden_size)^p with p = 0.781 for Llama and 0.0775 for Qwen models (the
    tinker-cookbook's numbers; the paper fits this form without printing p or the base). LoRA: 10x
    FullFT's (the cookbook's 10; the paper's fit is 9.8, "about 10x", nearly rank-independent, rank 1
    lower). Runs of <= 100 steps: LoRA at 15x FullFT's, i.e. x 15/10 (the paper, C2). The tiny presets
    take their architecture's exponent: tiny-llama is a Llama (0.781), tiny-moe a Qwen3-MoE (0.0775);
    at hidden size 128, far below the fitted models', that is an extrapolation: check it with
    an LR sweep and `lora-lab fit-lr`."""
    if method not in ("lora", "full"):
        raise ConfigError(f"method={method!r}: choose lora or full")
    a = Arch.of(config_or_name)
    if a.family not in LR_EXPONENTS:
        raise ConfigError(f"model_type={a.model_type}: no published LR exponent (Llama and Qwen only); "
                          f"fit one from your own sweeps with `lora-lab fit-lr`")
    lr = BASE_LR * (2000 / a.hidden) ** LR_EXPONENTS[a.family]
    if method == "lora":
        lr *= LORA_MULTIPLIER * (SHORT_RUN_FACTOR if steps is not None and steps <= SHORT_RUN_STEPS else 1.0)
    return lr


def sweep_lr(model: ModelLike) -> tuple[str, float] | None:
    """(hub id, LoRA LR) from tinker-cookbook's sweep (`SWEEP_LORA_LR`) for a model given as a hub
    id, a conf/model preset (qwen3-8b-base) or a ModelConfig; None for a model the sweep did not
    cover (the tiny presets, local directories, other hub ids). Hub ids match without regard to case,
    as the hub resolves them."""
    name = model.name if isinstance(model, ModelConfig) else str(model) if isinstance(model, (str, Path)) else ""
    name = _preset_name(name) or name
    key = next((k for k in SWEEP_LORA_LR if k.lower() == name.lower()), None)
    return None if key is None else (key, SWEEP_LORA_LR[key])


# ----------------------------------------------------------------------------- the LR law fit


@dataclass(frozen=True)
class LRPoint:
    hidden_size: int
    lr: float
    method: str = "lora"
    model: str = ""


@dataclass(frozen=True)
class LRFit:
    """LR = m (2000 / hidden)^p; with both methods, one p and LoRA's LR = multiplier x FullFT's."""

    method: str  # lora, full or both (then m is LoRA's and m_full FullFT's)
    m: float
    m_se: float
    p: float
    p_se: float  # 0.0 when p was fixed
    n: int
    rms_log10: float  # residual scatter of log10 LR
    m_full: float | None = None
    multiplier: float | None = None  # LoRA / FullFT
    multiplier_se: float | None = None


def _ols(X, y):
    """Least squares: coefficients, their covariance from the residual variance (NaN with no
    residual degrees of freedom), the residuals and the residual degrees of freedom."""
    import numpy as np

    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    resid, dof = y - X @ beta, len(y) - X.shape[1]
    cov = (float(resid @ resid) / dof if dof > 0 else math.nan) * np.linalg.pinv(X.T @ X)
    return beta, cov, resid, dof


def t_within(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with `dof` (an integer >= 1) degrees of freedom: the finite
    series in cos(theta), theta = atan(t / sqrt(dof)), that the t distribution has at integer dof."""
    theta = math.atan(abs(t) / math.sqrt(dof))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    term, series = 1.0, 1.0
    if dof % 2:
        for k in range(1, (dof - 1) // 2):
            term *= c2 * 2 * k / (2 * k + 1)
            series += term
        return 2 / math.pi * (theta + (s * math.cos(theta) * series if dof > 1 else 0.0))
    for k in range(1, dof // 2):
        term *= c2 * (2 * k - 1) / (2 * k)
        series += term
    return s * series


def t_quantile(level: float, dof: int) -> float:
    """The t with P(|T| <= t) = level (two-sided), by bisection on `t_within`."""
    if not 0 < level < 1 or dof < 1:
        raise ValueError(f"level={level}, dof={dof}: need 0 < level < 1 and dof >= 1")
    lo, hi = 0.0, 1.0
    while t_within(hi, dof) < level:
        lo, hi = hi, 2 * hi
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_within(mid, dof) < level else (lo, mid)
    return (lo + hi) / 2


def fit_lr_law(points: Iterable[LRPoint | tuple], p: float | None = None) -> LRFit:
    """Least squares in log space: log LR = log m + p log(2000 / hidden) (+ log multiplier on LoRA
    points when FullFT points are given too). Standard errors from the residual variance, by the
    delta method for m and the multiplier; NaN with no residual degrees of freedom. `p` fixes the
    exponent (needed when every point has the same hidden size)."""
    import numpy as np

    pts = [x if isinstance(x, LRPoint) else LRPoint(*x) for x in points]
    if not pts:
        raise ValueError("no points to fit")
    for x in pts:
        if not (x.lr > 0 and x.hidden_size > 0 and x.method in ("lora", "full")):
            raise ValueError(f"bad point {x}: need lr > 0, hidden_size > 0 and method lora or full")
    if p is None and len({x.hidden_size for x in pts}) < 2:
        raise ValueError("every point has the same hidden size, so p cannot be fitted: give p")
    xs = np.log(2000 / np.array([x.hidden_size for x in pts], dtype=float))
    y = np.log(np.array([x.lr for x in pts])) - (p * xs if p is not None else 0.0)
    is_lora = np.array([x.method == "lora" for x in pts], dtype=float)
    both = 0 < is_lora.sum() < len(pts)
    X = np.stack([np.ones_like(xs)] + ([xs] if p is None else []) + ([is_lora] if both else []), axis=1)
    beta, cov, resid, _ = _ols(X, y)
    ref = np.zeros(X.shape[1])  # log m as a combination of the coefficients
    ref[0] = 1.0
    if both:
        ref[-1] = 1.0  # m is LoRA's: intercept + log multiplier
    m = math.exp(float(ref @ beta))
    fit = LRFit("both" if both else pts[0].method, m, m * math.sqrt(float(ref @ cov @ ref)),
                float(beta[1]) if p is None else float(p), math.sqrt(cov[1, 1]) if p is None else 0.0,
                len(pts), float(np.sqrt(np.mean(resid**2))) / math.log(10))
    if both:
        mult = math.exp(beta[-1])
        fit = LRFit(**{**vars(fit), "m_full": math.exp(beta[0]), "multiplier": mult,
                       "multiplier_se": mult * math.sqrt(cov[-1, -1])})
    return fit


@dataclass(frozen=True)
class LRLaw:
    """LR = m (2000 / hidden)^p fitted to one method's optimal LRs alone (`fit_lr_method`), with
    intervals at `level` from the t distribution on the residual degrees of freedom (none: no
    interval)."""

    method: str  # lora or full
    m: float
    p: float
    n: int
    dof: int  # n - 2
    hidden: tuple[int, int]  # the smallest and the largest hidden size fitted
    models: tuple[str, ...]
    rms_log10: float  # residual scatter of log10 LR
    cov: tuple[float, float, float] | None = None  # var(log m), cov(log m, p), var(p); None without dof
    level: float = LR_FIT_LEVEL

    @property
    def t(self) -> float | None:
        return t_quantile(self.level, self.dof) if self.cov is not None and self.dof > 0 else None

    @property
    def m_interval(self) -> tuple[float, float] | None:
        t = self.t
        if t is None:
            return None
        half = t * math.sqrt(self.cov[0])
        return self.m * math.exp(-half), self.m * math.exp(half)

    @property
    def p_interval(self) -> tuple[float, float] | None:
        t = self.t
        return None if t is None else (self.p - t * math.sqrt(self.cov[2]), self.p + t * math.sqrt(self.cov[2]))

    def lr(self, hidden: int) -> float:
        return self.m * (2000 / hidden) ** self.p

    def lr_interval(self, hidden: int) -> tuple[float, float] | None:
        """The interval of the fitted law's LR at this hidden size (of the line, not of one sweep's optimum)."""
        t = self.t
        if t is None:
            return None
        x = math.log(2000 / hidden)
        half = t * math.sqrt(max(self.cov[0] + 2 * x * self.cov[1] + x * x * self.cov[2], 0.0))
        return self.lr(hidden) * math.exp(-half), self.lr(hidden) * math.exp(half)

    def extrapolates(self, hidden: int) -> bool:
        return not self.hidden[0] <= hidden <= self.hidden[1]

    def to_json(self) -> dict:
        return {"method": self.method, "m": self.m, "p": self.p, "level": self.level, "m_interval": self.m_interval,
                "p_interval": self.p_interval, "n": self.n, "dof": self.dof, "hidden": list(self.hidden),
                "models": list(self.models), "rms_log10": self.rms_log10,
                "cov_log_m_p": None if self.cov is None else list(self.cov)}

    @classmethod
    def from_json(cls, d: dict) -> LRLaw:
        """The law of a `to_json` dict; ValueError (or KeyError, TypeError) on anything else."""
        cov = d["cov_log_m_p"]
        law = cls(str(d["method"]), float(d["m"]), float(d["p"]), int(d["n"]), int(d["dof"]),
                  (int(d["hidden"][0]), int(d["hidden"][1])), tuple(str(x) for x in d["models"]),
                  float(d["rms_log10"]), None if cov is None else (float(cov[0]), float(cov[1]), float(cov[2])),
                  float(d.get("level", LR_FIT_LEVEL)))
        if law.method not in ("lora", "full") or not (law.m > 0 and math.isfinite(law.p) and 0 < law.level < 1):
            raise ValueError(f"method {law.method!r}, m {law.m}, p {law.p}, level {law.level}: need lora or full, "
                             f"m > 0, a finite p, 0 < level < 1")
        return law


def fit_lr_method(points: Iterable[LRPoint | tuple], method: str, level: float = LR_FIT_LEVEL) -> LRLaw:
    """Least squares of log LR = log m + p log(2000 / hidden) over the points of one method (lora or
    full), its own m and p; needs two hidden sizes or more."""
    import numpy as np

    pts = [x for x in (x if isinstance(x, LRPoint) else LRPoint(*x) for x in points) if x.method == method]
    if len({x.hidden_size for x in pts}) < 2:
        raise ValueError(f"{method}: points at {len({x.hidden_size for x in pts})} hidden size(s); p needs two or more")
    if any(not x.lr > 0 for x in pts):
        raise ValueError(f"{method}: every lr must be > 0")
    xs = np.log(2000 / np.array([x.hidden_size for x in pts], dtype=float))
    beta, cov, resid, dof = _ols(np.stack([np.ones_like(xs), xs], axis=1), np.log([x.lr for x in pts]))
    hidden = [x.hidden_size for x in pts]
    return LRLaw(method, math.exp(float(beta[0])), float(beta[1]), len(pts), dof, (min(hidden), max(hidden)),
                 tuple(sorted({x.model for x in pts})), float(np.sqrt(np.mean(resid**2))) / math.log(10),
                 (float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])) if dof > 0 else None, level)


def save_lr_fits(path: str | Path, fits: dict[str, dict[str, LRLaw]], sources: Sequence[str], filters: dict) -> None:
    """The per-method fits as JSON: family -> method -> the law's m, p, intervals, n, hidden range,
    models; with the files they came from and the filters that chose their rows."""
    out = {"law": "LR = m (2000 / hidden_size)^p", "sources": list(sources), "filters": filters,
           "fits": {fam: {m: law.to_json() for m, law in laws.items()} for fam, laws in fits.items()}}
    Path(path).write_text(json.dumps(out, indent=2) + "\n")


def load_lr_fits(path: str | Path) -> dict[str, dict[str, LRLaw]]:
    """What `save_lr_fits` wrote; a ConfigError naming lr_fit for anything else."""
    try:
        fits = json.loads(Path(path).read_text())["fits"]
        out = {str(fam): {law.method: law for law in map(LRLaw.from_json, laws.values())} for fam, laws in fits.items()}
    except OSError as exc:
        raise ConfigError(f"lr_fit={path}: cannot read it ({exc.strerror or exc}); give the file "
                          f"`lora-lab fit-lr --save` wrote") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ConfigError(f"lr_fit={path}: not a fit written by `lora-lab fit-lr --save` ({type(exc).__name__}: "
                          f"{str(exc)[:100]})") from None
    if not any(out.values()):
        raise ConfigError(f"lr_fit={path}: holds no fit; rerun `lora-lab fit-lr --save` on sweeps at two hidden "
                          f"sizes or more")
    return out


@lru_cache(maxsize=64)
def _arch(model: str) -> Arch:
    return Arch.of(model)


def read_optimal_lr(paths: Sequence[str | Path], min_rank: int = 1, layers: str | None = None,
                    batch_size: int | None = None, keep_edge: bool = False) -> list[LRPoint]:
    """LRPoints from optimal_lr.csv files written by `lora-lab analyze` (or directories holding one);
    the hidden size comes from the model column through the model lookup. Rows whose optimum sits
    at the edge of the LR grid (column `edge` true: a bound, not an optimum) are left out unless
    keep_edge, and so are LoRA rows of another alpha convention than the law's (columns `alpha_mode`
    and `alpha`, as tiny/alpha writes them: the law is for alpha = 32, scale alpha / rank). One
    optimum read from the same runs by two experiments (tiny/width and tiny/alpha share the hidden-128
    FullFT runs; so do two analyses of one root) is one point: rows equal in model, method, rank,
    layers, batch size, alpha, best LR and best loss count once."""
    points, seen = [], set()
    for path in map(Path, paths):
        f = path / "optimal_lr.csv" if path.is_dir() else path
        if not f.is_file():
            raise ConfigError(f"{path}: no optimal_lr.csv there; run `lora-lab analyze` on the sweep first")
        with open(f, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"method", "best_lr", "model"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"{f}: missing columns {', '.join(sorted(missing))}")
            for row in reader:
                if not row.get("best_lr") or row["method"] not in ("lora", "full"):
                    continue
                lora = row["method"] == "lora"
                if (not keep_edge and str(row.get("edge", "")).strip().lower() in ("true", "1")
                        or lora and row.get("rank") and int(float(row["rank"])) < min_rank
                        or lora and layers and row.get("layers") and row["layers"] != layers
                        or batch_size and row.get("batch_size") and int(float(row["batch_size"])) != batch_size
                        or lora and not _paper_alpha(row)):
                    continue
                key = _optimum_key(row)
                if key in seen:
                    continue
                seen.add(key)
                points.append(LRPoint(_arch(row["model"]).hidden, float(row["best_lr"]), row["method"], row["model"]))
    return points


def _optimum_key(row: dict) -> tuple:
    """What makes an optimal_lr.csv row one optimum of one set of runs (not the experiment reading it)."""
    def num(name: str) -> float | None:
        text = str(row.get(name) or "").strip()
        return float(text) if text else None

    lora = row["method"] == "lora"
    return (row["model"], row["method"], num("rank") if lora else None, (row.get("layers") or "") if lora else "",
            num("batch_size"), (row.get("alpha_mode") or "fixed").strip(), num("alpha") if lora else None,
            num("best_lr"), num("best_final_loss"))


def _paper_alpha(row: dict) -> bool:
    """Whether an optimal_lr.csv row is of the paper's alpha convention (no such columns: it is)."""
    mode, alpha = (row.get("alpha_mode") or "fixed").strip(), (row.get("alpha") or "").strip()
    return mode == "fixed" and (not alpha or float(alpha) == 32.0)


def _pm(x: float, se: float | None, fmt: str = ".2e") -> str:
    return f"{x:{fmt}} ± {se:{fmt}}" if se is not None and math.isfinite(se) else f"{x:{fmt}} ± n/a"


def fit_lr_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="lora-lab fit-lr", description="Refit LR = M (2000 / hidden_size)^p and the "
                                 "LoRA/FullFT multiplier from the optimal LRs of your own sweeps, per model family: "
                                 "jointly (one p, LoRA = multiplier x FullFT), and each method alone (its own M and p, "
                                 f"{LR_FIT_LEVEL:.0%} intervals).")
    ap.add_argument("paths", nargs="+", help="sweep directories holding optimal_lr.csv, or the CSV files")
    ap.add_argument("--min-rank", type=int, default=1, help="drop LoRA rows below this rank (the paper: rank 1 is lower)")
    ap.add_argument("--layers", choices=LAYER_SETS, help="keep LoRA rows of this layer set only")
    ap.add_argument("--batch-size", type=int, help="keep rows of this batch size only")
    ap.add_argument("--keep-edge", action="store_true", help="keep optima at the edge of the LR grid (bounds only)")
    ap.add_argument("--save", metavar="PATH", help="write the per-method fits as JSON, for `lora-lab plan lr_fit=PATH` "
                    "(default: write nothing)")
    args = ap.parse_args(argv)
    if args.save and not Path(args.save).expanduser().resolve().parent.is_dir():
        raise ConfigError(f"--save={args.save}: its directory does not exist; give a path in an existing directory")
    points = read_optimal_lr(args.paths, args.min_rank, args.layers, args.batch_size, args.keep_edge)
    if not points:
        raise ConfigError("no usable rows (method lora or full, with a best_lr) in " + ", ".join(args.paths))
    print(f"{'family':<8}{'points':>7}{'models':>7}  {'M LoRA':<21}{'M FullFT':<21}{'p':<17}{'LoRA/FullFT':<13}rms log10")
    for fam in sorted({_arch(x.model).family for x in points}):
        pts = [x for x in points if _arch(x.model).family == fam]
        fixed = LR_EXPONENTS.get(fam) if len({x.hidden_size for x in pts}) < 2 else None
        if len({x.hidden_size for x in pts}) < 2 and fixed is None:
            print(f"{fam:<8}{len(pts):>7}  one hidden size and no published exponent: p cannot be fitted")
            continue
        f = fit_lr_law(pts, p=fixed)
        m_lora = _pm(f.m, f.m_se) if f.method != "full" else "-"
        m_full = f"{f.m_full:.2e}" if f.m_full else _pm(f.m, f.m_se) if f.method == "full" else "-"
        p_text = f"{f.p:.3f} (fixed)" if fixed is not None else _pm(f.p, f.p_se, ".3f")
        ratio = _pm(f.multiplier, f.multiplier_se, ".1f") if f.multiplier else "-"
        print(f"{fam:<8}{f.n:>7}{len({x.model for x in pts}):>7}  {m_lora:<21}{m_full:<21}{p_text:<17}{ratio:<13}"
              f"{f.rms_log10:.3f}")
    print(f"M is the LR at hidden size 2000. Published: M LoRA {BASE_LR * LORA_MULTIPLIER:.1e}, M FullFT {BASE_LR:.1e}, "
          f"p llama {LR_EXPONENTS['llama']}, qwen {LR_EXPONENTS['qwen']} (tinker-cookbook); "
          f"LoRA/FullFT {PAPER_LORA_MULTIPLIER} (the paper's fit)")
    print(f"\nEach method alone, its own M and p ({LR_FIT_LEVEL:.0%} intervals: t distribution on the n - 2 residual "
          f"degrees of freedom; n/a without any):")
    print(f"{'family':<8}{'method':<8}{'points':>7}{'models':>7}  {'hidden':<12}{'M':<31}{'p':<25}rms log10")
    fits: dict[str, dict[str, LRLaw]] = {}
    for fam in sorted({_arch(x.model).family for x in points}):
        for method in ("lora", "full"):
            pts = [x for x in points if x.method == method and _arch(x.model).family == fam]
            if not pts:
                continue
            sizes = sorted({x.hidden_size for x in pts})
            span = f"{sizes[0]}..{sizes[-1]}" if len(sizes) > 1 else str(sizes[0])
            head = f"{fam:<8}{method:<8}{len(pts):>7}{len({x.model for x in pts}):>7}  {span:<12}"
            if len(sizes) < 2:
                print(head + "one hidden size: p cannot be fitted")
                continue
            law = fits.setdefault(fam, {})[method] = fit_lr_method(pts, method)
            m_iv, p_iv = law.m_interval, law.p_interval
            m_text = f"{law.m:.2e} " + (f"[{m_iv[0]:.2e}, {m_iv[1]:.2e}]" if m_iv else "n/a")
            p_text = f"{law.p:.3f} " + (f"[{p_iv[0]:.3f}, {p_iv[1]:.3f}]" if p_iv else "n/a")
            print(f"{head}{m_text:<31}{p_text:<25}{law.rms_log10:.3f}")
    if args.save:
        if not fits:
            raise ConfigError(f"--save={args.save}: no method has optima at two hidden sizes or more: nothing to save")
        save_lr_fits(Path(args.save).expanduser(), fits, args.paths, {"min_rank": args.min_rank, "layers": args.layers,
                     "batch_size": args.batch_size, "keep_edge": args.keep_edge})
        print(f"wrote {args.save}: use it with `lora-lab plan lr_fit={args.save}`")
    return 0
