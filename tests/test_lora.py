import math

import pytest
import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from lora_lab.config import ConfigError, LoraConfig, ModelConfig
from lora_lab.lora import ATTN, MLP, LoRALinear, apply_lora, export_peft, load_peft_tensors, param_groups
from lora_lab.models import build_model, count_params


def _model(name="tiny-llama"):
    return build_model(ModelConfig(name=name))


def _randomize(sites, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s in sites:
            s.module.lora_A.copy_(torch.randn(s.module.lora_A.shape, generator=g) * 0.1)
            s.module.lora_B.copy_(torch.randn(s.module.lora_B.shape, generator=g) * 0.1)


def _tokens(vocab, seed=0, shape=(2, 24)):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layers", ["all", "attn", "mlp"])
@pytest.mark.parametrize("unembed", [False, True])
def test_trainable_params_equal_rank_times_dims(layers, unembed):
    model, _ = _model()
    names = {"attn": ATTN, "mlp": MLP, "all": ATTN + MLP}[layers]
    expected = 0
    for path, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and (path.rpartition(".")[2] in names or (unembed and path == "lm_head")):
            expected += 4 * (m.in_features + m.out_features)
    sites = apply_lora(model, LoraConfig(rank=4, layers=layers, unembed=unembed))
    assert count_params(model, trainable_only=True) == expected == sum(s.num_params() for s in sites)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)


def test_moe_experts_get_per_expert_rank_rank_over_active():
    model, _ = _model("tiny-moe")
    cfg = model.config
    sites = apply_lora(model, LoraConfig(rank=8, layers="mlp", unembed=False))
    per_expert = 8 // cfg.num_experts_per_tok
    expected = cfg.num_hidden_layers * cfg.num_experts * per_expert * (
        (cfg.hidden_size + 2 * cfg.moe_intermediate_size) + (cfg.moe_intermediate_size + cfg.hidden_size))
    assert {s.rank for s in sites} == {per_expert}
    assert count_params(model, trainable_only=True) == expected
    # The router is not adapted.
    assert not any("gate." in n or n.endswith("mlp.gate") for n, _ in model.named_parameters() if "lora_" in n)
    with pytest.raises(ConfigError, match="lora.rank"):
        apply_lora(_model("tiny-moe")[0], LoraConfig(rank=3, layers="all"))


def test_init_is_peft_kaiming_uniform_and_b_zero():
    model, _ = _model()
    base_logits = model(input_ids=_tokens(len(_model()[1]))).logits
    sites = apply_lora(model, LoraConfig(rank=16, init_a_scale=2.0))
    for s in sites:
        bound = 2.0 / math.sqrt(s.d_in)
        a = s.module.lora_A
        assert a.abs().max() <= bound and a.abs().max() > 0.9 * bound
        assert torch.all(s.module.lora_B == 0)
    # B = 0: the adapted model starts exactly at the base model.
    assert torch.equal(model(input_ids=_tokens(len(_model()[1]))).logits, base_logits)


def _peft_twin(model_name, ours_sites, cfg: LoraConfig, tmp_path):
    """The same adapter values loaded into a peft model over an identical base."""
    export_peft(ours_sites, cfg, tmp_path / "adapter", model_name)
    base, _ = _model(model_name)
    return PeftModel.from_pretrained(base, str(tmp_path / "adapter"), is_trainable=True)


@pytest.mark.parametrize("layers, unembed", [("all", False), ("attn", True), ("mlp", False)])
def test_parity_with_peft_logits_and_gradients(layers, unembed, tmp_path):
    cfg = LoraConfig(rank=4, layers=layers, unembed=unembed)
    model, tok = _model()
    sites = apply_lora(model, cfg)
    _randomize(sites)
    twin = _peft_twin("tiny-llama", sites, cfg, tmp_path)
    # peft's own injection of the same config targets the same matrices.
    fresh = get_peft_model(_model()[0], PeftLoraConfig(r=4, lora_alpha=32, target_modules=sorted(
        {s.path.rpartition(".")[2] for s in sites})))
    assert sum(p.numel() for p in fresh.parameters() if p.requires_grad) == sum(s.num_params() for s in sites)

    x = _tokens(len(tok))
    ours, theirs = model(input_ids=x).logits, twin(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    ours.square().mean().backward()
    theirs.square().mean().backward()
    twin_params = dict(twin.named_parameters())
    for s in sites:
        key = f"base_model.model.{s.path}"
        ga, gb = twin_params[f"{key}.lora_A.default.weight"].grad, twin_params[f"{key}.lora_B.default.weight"].grad
        assert torch.allclose(s.module.lora_A.grad[0], ga, atol=1e-6, rtol=1e-4)
        assert torch.allclose(s.module.lora_B.grad[0], gb, atol=1e-6, rtol=1e-4)


def test_moe_export_reloads_in_peft_with_same_logits(tmp_path):
    cfg = LoraConfig(rank=4, layers="all")
    model, tok = _model("tiny-moe")
    sites = apply_lora(model, cfg)
    _randomize(sites)
    x = _tokens(len(tok))
    with torch.no_grad():
        ours = model(input_ids=x).logits
        base = _model("tiny-moe")[0](input_ids=x).logits
        twin = _peft_twin("tiny-moe", sites, cfg, tmp_path)
        theirs = twin(input_ids=x).logits
    assert (ours - base).abs().max() > 1e-2, "the adapter must change the output"
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    # And back: peft format -> our layers.
    model2, _ = _model("tiny-moe")
    sites2 = apply_lora(model2, cfg)
    load_peft_tensors(sites2, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(model2(input_ids=x).logits, ours)


def test_k_adapters_equal_k_separate_runs():
    base = torch.nn.Linear(12, 7)
    two = LoRALinear(base, rank=3, alpha=32, k=2)
    with torch.no_grad():
        two.lora_B.normal_()
    x = torch.randn(4, 5, 12)
    y = two(x)
    for k, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
        one = LoRALinear(base, rank=3, alpha=32, k=1)
        with torch.no_grad():
            one.lora_A.copy_(two.lora_A[k : k + 1])
            one.lora_B.copy_(two.lora_B[k : k + 1])
        assert torch.allclose(one(x[rows]), y[rows], atol=1e-6)


def test_lr_multipliers_split_a_and_b():
    model, _ = _model()
    apply_lora(model, LoraConfig(rank=2, layers="attn", unembed=False))
    a, b = param_groups(model, 1e-3, 0.5, 4.0)
    assert a["lr"] == pytest.approx(5e-4) and b["lr"] == pytest.approx(4e-3)
    assert len(a["params"]) == len(b["params"]) == 4 * model.config.num_hidden_layers
