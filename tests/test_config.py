import subprocess
from pathlib import Path

import pytest

from conftest import LORA_LAB
from lora_lab.config import CONF_DIR, ConfigError, compose
from lora_lab.runs import config_hash, run_dir, run_id


def test_defaults_are_the_tiny_paper_settings():
    cfg = compose([])
    assert cfg.method == "lora" and cfg.model.name == "tiny-llama" and cfg.data.name == "tiny-tulu"
    assert cfg.lora.alpha == 32 and cfg.lora.init_a_scale == 1.0 and cfg.lora.lr_a_mult == cfg.lora.lr_b_mult == 1.0
    assert cfg.train.epochs == 1 and cfg.train.max_steps is None


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml")))
def test_every_model_preset_composes(preset):
    cfg = compose([f"model={preset}"])
    assert cfg.model.name


@pytest.mark.parametrize("overrides, key", [
    (["lora.rank=0"], "lora.rank"),
    (["lora.rank=513"], "lora.rank"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-1e-3"], "optim.lr"),
    (["optim.lr=abc"], "optim.lr"),
    (["lora.layers=ffn"], "lora.layers"),
    (["optim.batch_size=32", "optim.micro_batch_size=5"], "optim.micro_batch_size"),
    (["model=gpt-17"], "model=gpt-17"),
    (["model.name=/no/such/dir"], "model.name"),
    (["model.name=not-a-model"], "model.name"),
    (["data=nope"], "data=nope"),
    (["method=full", "lora.rank=4"], "lora.rank"),
    (["method=full", "lora.unembed=false"], "lora.unembed"),
    (["method=qlora"], "method"),
    (["logger.wandb=maybe"], "logger.wandb"),
    (["train.max_steps=0"], "train.max_steps"),
    (["train.max_steps=1.5"], "train.max_steps"),
    (["optim.adam_eps=-1"], "optim.adam_eps"),
    (["optim.lrr=1"], "optim.lrr"),
    (["lora.alpha=0"], "lora.alpha"),
    (["train.device=tpu"], "train.device"),
    (["run.experiment=../escape"], "run.experiment"),
])
def test_bad_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_local_model_dir_needs_config_json(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        compose([f"model.name={tmp_path}"])
    (tmp_path / "config.json").write_text("{}")
    assert compose([f"model.name={tmp_path}"]).model.name == str(tmp_path)


def test_hub_ids_are_accepted_without_network():
    assert compose(["model.name=meta-llama/Llama-3.1-8B"]).model.name == "meta-llama/Llama-3.1-8B"


def test_run_id_is_deterministic_and_tracks_what_changes_the_result(tmp_path):
    a = compose(["lora.rank=4"])
    assert run_id(a) == run_id(compose(["lora.rank=4"]))
    # Where a run is written or how it logs does not change what it computes.
    assert run_id(a) == run_id(compose(["lora.rank=4", f"run.root={tmp_path}", "logger.progress=none"]))
    for other in (["lora.rank=8"], ["lora.rank=4", "train.seed=1"], ["lora.rank=4", "optim.lr=2e-3"],
                  ["lora.rank=4", "lora.lr_b_mult=2"], ["lora.rank=4", "data.num_examples=100"]):
        assert run_id(compose(other)) != run_id(a), other
    assert "r4" in run_id(a) and "s0" in run_id(a) and config_hash(a) in run_id(a)
    assert run_dir(compose([f"run.root={tmp_path}", "run.experiment=exp/rank"])).parent == tmp_path / "exp" / "rank"


def test_cli_rejects_bad_input_before_loading_anything(tmp_path):
    for args in (["lora.rank=-2"], ["model=nope"], ["method=full", "lora.alpha=16"], ["model=tiny-moe", "lora.rank=3"]):
        p = subprocess.run([LORA_LAB, "train", *args, f"run.root={tmp_path}"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stderr
        lines = [l for l in p.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("lora-lab: config error:"), p.stderr
        assert not any(Path(tmp_path).iterdir()), "nothing may be written for a rejected config"


def test_automatic_micro_batch_is_the_largest_divisor_up_to_8():
    for batch, micro in ((32, 8), (12, 6), (7, 7), (4, 4), (9, 3)):
        assert compose([f"optim.batch_size={batch}"]).optim.micro_for() == micro
    assert compose(["optim.batch_size=32", "optim.micro_batch_size=32"]).optim.micro_for() == 32
