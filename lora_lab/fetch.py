"""`lora-lab fetch`: download every model and data set that an experiment's grid (or one config)
needs into the Hugging Face caches, each once, so that its runs can then go without the network
(HF_HUB_OFFLINE=1 on the cluster's nodes).

    lora-lab fetch paper/rank_tulu3_llama8b --dry-run     # what it would fetch, nothing downloaded
    lora-lab fetch paper/rank_tulu3_llama8b               # on a machine with network and a shared HF_HOME
    lora-lab fetch experiment=paper/rl_math_llama8b       # the same, as `lora-lab plan` names experiments
    lora-lab fetch model=qwen3-8b-base data=tulu3         # one config's

A model is its config, tokenizer and safetensors weights (hub.fetch_model: `snapshot_download`
into HF_HUB_CACHE, without Meta's original/ checkpoints); a data set is each split a run reads
(`datasets.load_dataset`, prepared in HF_DATASETS_CACHE). Both land under HF_HOME, as the runs read
them. The tiny presets, local model directories and data.path files need nothing.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Sequence

from lora_lab.config import REAL_DATA_SETS, TINY_PRESETS, Config, ConfigError, compose

USAGE = """usage: lora-lab fetch [EXPERIMENT | experiment=EXPERIMENT] [key=value ...] [--dry-run]

Downloads every model (config, tokenizer, weights) and data set (each split a run reads) that the
experiment's grid (experiments/<scale>/<figure>.yaml, e.g. paper/rank_tulu3_llama8b, or the path of
an experiment file, my_sweep.yaml) or the config of the overrides needs, each once, into the Hugging
Face caches under HF_HOME, so that the runs can go offline (HF_HUB_OFFLINE=1). Overrides shrink or
change the grid as for `lora-lab sweep`.

  --dry-run   list what it would fetch (and which models the cache holds already); download nothing
Gated models (Llama) need a token with access: `hf auth login`, or HF_TOKEN.
"""


@dataclass(frozen=True)
class ModelNeed:
    name: str
    revision: str | None
    trust_remote_code: bool

    def describe(self) -> str:
        return self.name + (f" @ {self.revision}" if self.revision else "")


@dataclass(frozen=True)
class DataNeed:
    hub_id: str
    config: str | None
    split: str

    def describe(self) -> str:
        return self.hub_id + (f" ({self.config})" if self.config else "") + f", split {self.split}"


def needs(cfgs: Sequence[Config]) -> tuple[list[ModelNeed], list[DataNeed]]:
    """The hub models and data set splits the configs read, each once, in the order first met."""
    models: dict[ModelNeed, None] = {}
    data: dict[DataNeed, None] = {}
    for cfg in cfgs:
        m = cfg.model
        if m.name not in TINY_PRESETS and not os.path.isdir(os.path.expanduser(m.name)):
            models[ModelNeed(m.name, m.revision, m.trust_remote_code)] = None
        d = cfg.data
        if d.name in REAL_DATA_SETS and d.path is None and d.hub_id:
            for split in (d.split, d.eval_split):
                if split:
                    data[DataNeed(d.hub_id, d.hub_config, split)] = None
    return list(models), list(data)


def _args(argv: list[str]) -> tuple[str | None, bool, list[str]]:
    experiment, dry, rest = None, False, []
    for arg in argv:
        if arg == "--dry-run":
            dry = True
        elif arg.startswith("-"):
            raise ConfigError(f"{arg}: unknown option; see lora-lab fetch --help")
        elif arg.startswith("experiment="):
            experiment = arg.partition("=")[2]
        elif "=" not in arg and experiment is None:
            experiment = arg
        else:
            rest.append(arg)
    return experiment, dry, rest


def _configs(experiment: str | None, overrides: list[str]) -> list[Config]:
    if experiment is None:
        return [compose(overrides)]
    from lora_lab.sweep import expand

    return expand(experiment, overrides)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def fetch_main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    experiment, dry, overrides = _args(argv)
    cfgs = _configs(experiment, overrides)
    models, data = needs(cfgs)
    what = experiment or "this config"
    runs = f"{len(cfgs)} runs" if experiment else "its run"
    if not models and not data:
        print(f"{what}: nothing to fetch ({runs} use only models and data sets that ship with lora-lab, are "
              f"generated, or are local files)")
        return 0
    from lora_lab import hub

    print(f"{what}: {runs} need {len(models)} model{'s' * (len(models) != 1)} and "
          f"{len(data)} data set split{'s' * (len(data) != 1)}")
    for m in models:
        state = "in the cache" if hub.model_cached(m.name, m.revision) else "to fetch"
        print(f"  model  {m.describe():<44} config, tokenizer, weights ({state})")
    for d in data:
        print(f"  data   {d.describe()}")
    from huggingface_hub import constants

    print(f"into the Hugging Face caches: models {constants.HF_HUB_CACHE}, data sets "
          f"{os.environ.get('HF_DATASETS_CACHE') or os.path.join(constants.HF_HOME, 'datasets')}")
    if dry:
        print("dry run: nothing fetched")
        return 0
    if hub.offline():
        print("lora-lab fetch: the Hugging Face hub is offline here (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE or "
              "TRANSFORMERS_OFFLINE is set, or the hub cannot be reached); run it where there is network", file=sys.stderr)
        return 1
    failed = 0
    for item, get in [*((m, lambda m=m: hub.fetch_model(m.name, m.revision, m.trust_remote_code)) for m in models),
                      *((d, lambda d=d: hub.fetch_dataset(d.hub_id, d.config, d.split)) for d in data)]:
        try:
            get()
            print(f"fetched {item.describe()}")
        except Exception as exc:  # noqa: BLE001 - gated, missing, a network error: one line each, then the others
            failed += 1
            hint = " (gated: accept its license on the hub, then `hf auth login` or set HF_TOKEN)" if "gated" in str(exc).lower() else ""
            print(f"lora-lab fetch: {item.describe()}: {type(exc).__name__}: {_first_line(exc)}{hint}", file=sys.stderr)
    if failed:
        print(f"lora-lab fetch: {failed} of {len(models) + len(data)} not fetched", file=sys.stderr)
        return 1
    print("done: the runs can go offline (HF_HUB_OFFLINE=1) with this HF_HOME")
    return 0
