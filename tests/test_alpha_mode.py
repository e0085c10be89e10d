"""lora.alpha_mode: how alpha follows the rank (fixed alpha / r, the paper's; alpha = lora.alpha * r;
rsLoRA's alpha / sqrt(r)), in our adapters, in the peft export and back, in run ids and on the
command line."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from peft.tuners.lora import LoraLayer

from lora_lab import cli
from lora_lab.config import ConfigError, LoraConfig, compose, load_config
from lora_lab.lora import LoRALinear, apply_lora, load_peft_tensors
from lora_lab.runs import identity, run_id
from test_lora import _model, _peft_twin, _randomize, _tokens

MODES = ("fixed", "rank", "sqrt_rank")


def _expected_scale(mode: str, alpha: float, rank: int) -> float:
    return {"fixed": alpha / rank, "rank": alpha, "sqrt_rank": alpha / math.sqrt(rank)}[mode]


@pytest.mark.parametrize("mode", MODES)
def test_a_lora_linear_scales_its_update_by_the_mode(mode):
    alpha, rank = 3.0, 9
    base = torch.nn.Linear(10, 6)
    lora = LoRALinear(base, rank=rank, alpha=alpha, alpha_mode=mode)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(2, 5, 10)
    a, b = lora.lora_A[0], lora.lora_B[0]
    delta = lora(x) - base(x)
    scale = _expected_scale(mode, alpha, rank)
    assert lora.scale == pytest.approx(scale, rel=1e-12) == LoraConfig(rank=rank, alpha=alpha, alpha_mode=mode).scale(rank)
    assert delta.abs().max() > 1e-2
    assert torch.allclose(delta, scale * (x @ a.T @ b.T), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_every_site_takes_the_configs_scale_for_its_own_rank(mode):
    # tiny-moe: attention and lm_head at lora.rank, experts at rank / active experts.
    model, _ = _model("tiny-moe")
    cfg = LoraConfig(rank=4, alpha=2.0, alpha_mode=mode, layers="all", unembed=True)
    sites = apply_lora(model, cfg)
    assert len({s.rank for s in sites}) == 2
    for s in sites:
        assert s.module.scale == cfg.scale(s.rank) == pytest.approx(_expected_scale(mode, 2.0, s.rank), rel=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_forward_equals_peft_forward_of_the_export(mode, tmp_path):
    cfg = LoraConfig(rank=4, alpha=3.0, alpha_mode=mode, layers="attn", unembed=True)
    model, tok = _model()
    sites = apply_lora(model, cfg)
    _randomize(sites)
    twin = _peft_twin("tiny-llama", sites, cfg, tmp_path)
    x = _tokens(len(tok), shape=(1, 4))
    with torch.no_grad():
        base = _model()[0](input_ids=x).logits
        ours, theirs = model(input_ids=x).logits, twin(input_ids=x).logits
    assert (ours - base).abs().max() > 1e-2
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    scalings = [m.scaling["default"] for m in twin.modules() if isinstance(m, LoraLayer)]
    assert len(scalings) == len(sites) and scalings == pytest.approx([_expected_scale(mode, 3.0, 4)] * len(sites), rel=1e-9)


@pytest.mark.parametrize("mode", ["rank", "sqrt_rank"])
def test_moe_export_keeps_per_expert_scales_in_peft(mode, tmp_path):
    # Expert ranks differ from lora.rank: rank mode needs peft's alpha_pattern, sqrt_rank use_rslora.
    cfg = LoraConfig(rank=4, alpha=3.0, alpha_mode=mode, layers="mlp", unembed=True)
    model, tok = _model("tiny-moe")
    sites = apply_lora(model, cfg)
    _randomize(sites)
    x = _tokens(len(tok), shape=(1, 4))
    with torch.no_grad():
        ours = model(input_ids=x).logits
        theirs = _peft_twin("tiny-moe", sites, cfg, tmp_path)(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)


def test_loading_an_adapter_honours_its_use_rslora(tmp_path):
    cfg = LoraConfig(rank=4, alpha=3.0, alpha_mode="sqrt_rank", layers="attn", unembed=False)
    model, tok = _model()
    sites = apply_lora(model, cfg)
    _randomize(sites)
    _peft_twin("tiny-llama", sites, cfg, tmp_path)
    x = _tokens(len(tok), shape=(1, 4))
    again, _ = _model()
    load_peft_tensors(apply_lora(again, cfg), tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, model(input_ids=x).logits)
    # The same tensors under alpha / r would compute another function: refused, naming the fix.
    with pytest.raises(ConfigError, match=r"lora.alpha_mode=fixed: .*use_rslora=True.*set lora.alpha_mode=sqrt_rank"):
        load_peft_tensors(apply_lora(_model()[0], LoraConfig(rank=4, alpha=3.0, layers="attn", unembed=False)),
                          tmp_path / "adapter")


def test_the_default_mode_leaves_run_ids_alone(tmp_path):
    plain = compose([])
    assert plain.lora.alpha_mode == "fixed"
    assert run_id(compose(["lora.alpha_mode=fixed"])) == run_id(plain)
    assert "alpha_mode" not in identity(plain)["lora"]
    # A run directory's config.yaml written before the key existed has the same id.
    old = plain.to_dict()
    del old["lora"]["alpha_mode"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    assert run_id(load_config(tmp_path / "config.yaml")) == run_id(plain)
    others = {run_id(compose([f"lora.alpha_mode={m}"])) for m in ("rank", "sqrt_rank")}
    assert len(others) == 2 and run_id(plain) not in others


def test_a_bad_alpha_mode_exits_2_with_one_line(capfd, tmp_path):
    code = cli.main(["train", "lora.alpha_mode=linear", f"run.root={tmp_path / 'runs'}"])
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert "lora.alpha_mode='linear'" in lines[0] and "fixed, rank, sqrt_rank" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_show_config_prints_the_mode(capfd):
    assert cli.main(["show-config", "lora.alpha_mode=sqrt_rank"]) == 0
    assert "alpha_mode: sqrt_rank" in capfd.readouterr().out
