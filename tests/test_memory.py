"""The memory estimate against what the code allocates, on the CPU: the activations every decoder
layer keeps for the backward (memory.layer_activation_bytes) against the tensors autograd
actually saves (torch.autograd.graph.saved_tensors_hooks) in each precision path of the package;
LoRA's adapters computing in a bf16 base's dtype (no fp32 copy of their inputs); the pre-flight's
refusal of a run that does not fit its GPU; `lora-lab gpus`."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lora_lab import memory
from lora_lab.config import ConfigError, LoraConfig, compose
from lora_lab.flops import Arch
from lora_lab.lora import ExpertLoRA, LoRALinear, apply_lora
from lora_lab.models import compute_in
from lora_lab.train import batch_nll

GIB = 2**30
VOCAB = 3000
SHAPES = {
    "llama": dict(model_type="llama", intermediate_size=512),
    "qwen3": dict(model_type="qwen3", intermediate_size=512),
    "moe": dict(model_type="qwen3_moe", intermediate_size=512, moe_intermediate_size=96, num_experts=8,
                num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[]),
}
# How each of the package's paths keeps a model (memory.precision), and how to build it here.
PATHS = {
    "lora fp32 (CPU)": ("lora", torch.float32, None, memory.Precision(4, 4, 4, 4, False)),
    "lora bf16 base, adapters in bf16 (GPU)": ("lora", torch.bfloat16, True, memory.Precision(2, 2, 2, 2, False)),
    "lora bf16 base, adapters in fp32 (before)": ("lora", torch.bfloat16, False, memory.Precision(2, 2, 2, 4, False)),
    "full fp32 (CPU)": ("full", torch.float32, None, memory.Precision(4, 4, 4, 4, False)),
    "full bf16 (FSDP's compute)": ("full", torch.bfloat16, None, memory.Precision(2, 2, 2, 2, False)),
    "full fp32 master, autocast bf16 (one GPU)": ("full", "master", None, memory.Precision(4, 2, 4, 2, True)),
}


def _model(kind: str, path: str, layers: str = "all", rank: int = 8):
    shape = dict(SHAPES[kind])
    conf = AutoConfig.for_model(shape.pop("model_type"), vocab_size=VOCAB, hidden_size=192, num_hidden_layers=4,
                                num_attention_heads=6, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                                **shape)
    method, dtype, in_base, prec = PATHS[path]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(conf, dtype=torch.bfloat16 if dtype == "master" else dtype)
    model.config.use_cache = False
    model.train()
    sites = []
    if method == "lora":
        # The layers' adapters only: the head's (memory.head_activation_bytes) are estimated apart.
        sites = apply_lora(model, LoraConfig(rank=rank, layers=layers, unembed=False))
        for s in sites:
            s.module.in_base_dtype = in_base
    else:
        if dtype == "master":  # what build_learner does for a bf16 FullFT on one process
            compute_in(model, torch.bfloat16)
            model.float()
        model.requires_grad_(True)
    return model, conf, method, prec, sites


def _saved_bytes(model, batch: int, length: int = 64) -> int:
    """Bytes of the distinct tensors autograd saves for the backward of one SFT loss (train.batch_nll)
    on a padded batch, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(batch))
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # padding: transformers passes a mask, as for a training micro-batch
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch_nll(model, {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()})
    return sum(seen.values())


def _per_sequence(model, length: int = 64) -> tuple[float, float]:
    """(bytes per sequence, bytes that do not grow with the batch) of what autograd saves."""
    one, three = _saved_bytes(model, 1, length), _saved_bytes(model, 3, length)
    return (three - one) / 2, one - (three - one) / 2


CASES = [("llama", p, "all") for p in PATHS] + [
    ("llama", "lora bf16 base, adapters in bf16 (GPU)", "mlp"),
    ("qwen3", "lora bf16 base, adapters in bf16 (GPU)", "all"),
    ("qwen3", "full bf16 (FSDP's compute)", "all"),
    ("moe", "lora fp32 (CPU)", "all"),
    ("moe", "lora bf16 base, adapters in bf16 (GPU)", "all"),
    ("moe", "lora bf16 base, adapters in bf16 (GPU)", "attn"),
    ("moe", "full bf16 (FSDP's compute)", "all"),
]


@pytest.mark.parametrize("kind, path, layers", CASES)
def test_activation_estimate_counts_what_autograd_saves(kind, path, layers):
    model, conf, method, prec, sites = _model(kind, path, layers)
    length = 64
    measured, fixed = _per_sequence(model, length)
    arch = Arch.of(conf)
    # What one sequence keeps, without the loss's backward working set (not a saved tensor).
    est = memory.activation_bytes(arch, prec, method, 8, layers, seq_len=length, padded=True,
                                       qk_norm=kind != "llama") - 8 * arch.vocab * length
    # An upper bound, within 10%: the first layer's input needs no gradient under LoRA, and the logits
    # of the last position are not computed.
    assert measured <= est <= 1.10 * measured, (measured, est)
    # What does not grow with the batch: casts of the adapters (A and B in bf16) or of the weights
    # (autocast), and the merged expert weights W + s B A.
    n_lora = sum(s.num_params() for s in sites)
    expected = 0.0
    if in_bf16(path) and method == "lora":
        expected += 2 * n_lora
    if prec.autocast:
        n_all = sum(p.numel() for p in model.parameters())
        expected += 2 * (n_all - arch.vocab * arch.hidden)
    if kind == "moe" and method == "lora" and layers != "attn":
        expected += prec.compute * len(arch.moe_layers) * arch.experts * 3 * arch.hidden * arch.expert_intermediate
    assert fixed == pytest.approx(expected, rel=0.08, abs=64 * 1024)


def in_bf16(path: str) -> bool:
    return PATHS[path][2] is True


def test_adapters_on_a_bf16_base_keep_no_fp32_copy_of_their_inputs():
    # The same model, adapters computed in fp32 (what a bf16 GPU run did) and in bf16 (what it does):
    # the fp32 copies are 1.5x the layers' activations at Llama-3.1-8B's shape.
    old, _ = _per_sequence(_model("llama", "lora bf16 base, adapters in fp32 (before)")[0])
    new, _ = _per_sequence(_model("llama", "lora bf16 base, adapters in bf16 (GPU)")[0])
    assert new < 0.8 * old
    arch = Arch.of("llama-3.1-8b")
    ratio = (memory.layer_activation_bytes(arch, memory.Precision(2, 2, 2, 4, False), "lora", 256, "all")
             / memory.layer_activation_bytes(arch, memory.precision("lora"), "lora", 256, "all"))
    assert 1.45 < ratio < 1.55


def test_bf16_adapters_compute_in_bf16_and_keep_fp32_gradients():
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 12).to(torch.bfloat16)
    lora = LoRALinear(base, rank=4, alpha=32)
    with torch.no_grad():
        lora.lora_B.normal_()
    x = torch.randn(3, 5, 16, dtype=torch.bfloat16)
    # On the CPU the adapters compute in fp32 unless asked (the tiny results stay bitwise the same).
    assert lora.in_base_dtype is None
    fp32 = lora(x)
    a, b = lora.lora_A[0].float(), lora.lora_B[0].float()
    assert torch.equal(fp32, base(x) + ((x.float() @ a.T @ b.T) * lora.scale).to(torch.bfloat16))
    lora.in_base_dtype = True
    y = lora(x)
    a16, b16 = lora.lora_A[0].to(torch.bfloat16), lora.lora_B[0].to(torch.bfloat16)
    assert torch.equal(y, base(x) + (x @ a16.T @ b16.T) * lora.scale)
    y.float().square().sum().backward()
    assert lora.lora_A.grad.dtype == lora.lora_B.grad.dtype == torch.float32
    assert lora.lora_A.grad.abs().sum() > 0 and lora.lora_B.grad.abs().sum() > 0
    # An fp32 base is never cast.
    lora32 = LoRALinear(torch.nn.Linear(16, 12), rank=4, alpha=32)
    lora32.in_base_dtype = True
    x32 = torch.randn(2, 16)
    assert torch.equal(lora32(x32), lora32.base(x32))


def test_expert_adapters_merge_in_the_base_dtype_when_asked():
    w = torch.randn(4, 6, 5, dtype=torch.bfloat16)
    e = ExpertLoRA(w, rank=2, alpha=32)
    with torch.no_grad():
        e.lora_B.normal_()
    fp32 = e(w)
    assert torch.equal(fp32, w + (torch.bmm(e.lora_B, e.lora_A) * e.scale).to(torch.bfloat16))
    e.in_base_dtype = True
    low = e(w)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, w + torch.bmm(e.lora_B.to(torch.bfloat16), e.lora_A.to(torch.bfloat16)) * e.scale)


def test_the_estimate_follows_the_config_as_it_runs():
    cfg = compose(["model=llama-3.1-8b", "data=tulu3", "method=full", "optim.batch_size=128"])
    # micro_batch_size unset: 8 sequences per micro-batch on one process, the local share's on several.
    assert memory.estimate_for(cfg, 1).micro_batch == 8
    assert memory.estimate_for(cfg, 32).micro_batch == 4
    two = compose(["model=llama-3.1-8b", "data=tulu3", "method=full", "optim.batch_size=128", "optim.micro_batch_size=2"])
    e1, e2 = memory.estimate_for(cfg, 4), memory.estimate_for(two, 4)
    assert e2.micro_batch == 2 and e2.seq_len == 2048
    assert e1.activations > 3.5 * e2.activations and e1.weights == e2.weights
    ckpt = compose(["model=llama-3.1-8b", "data=tulu3", "method=full", "optim.batch_size=128", "optim.micro_batch_size=2",
                    "dist.activation_checkpointing=true"])
    assert memory.estimate_for(ckpt, 4).activations < 0.5 * e2.activations
    # One GPU: fp32 master weights, gradients and AdamW (16 bytes a parameter) and autocast's bf16 copies.
    one = memory.estimate_for(two, 1)
    n = 8_030_261_248
    assert one.weights + one.grads + one.optimizer == 16 * n and one.casts == 2 * (n - 128256 * 4096)
    # RL: prompt + completion per sequence, the sampler's KV cache for rl.sample_batch sequences.
    rl = compose(["model=llama-3.1-8b", "data=gsm8k", "task=rl", "rl.max_new_tokens=512", "data.max_seq_len=512",
                  "rl.sample_batch=64", "rl.group_size=32"])
    est = memory.estimate_for(rl, 1)
    assert est.seq_len == 1024 and est.sampling == 64 * (1024 * 32 * 2 * 1024 * 2 + 4 * 128256)


def test_moe_lora_counts_the_merged_expert_weights_on_every_gpu():
    cfg = compose(["model=qwen3-30b-a3b-base", "data=tulu3", "lora.rank=256", "lora.layers=mlp",
                   "optim.batch_size=128", "optim.micro_batch_size=1"])
    experts = 48 * 128 * 3 * 2048 * 768  # layers x experts x (gate, up, down) x hidden x expert width
    for world in (1, 8):
        est = memory.estimate_for(cfg, world)
        assert est.merged >= 2 * experts  # bf16, not divided by the GPUs: ~58 GB
        assert est.merged < 2 * experts * 1.05
    attn = compose(["model=qwen3-30b-a3b-base", "data=tulu3", "lora.rank=256", "lora.layers=attn",
                    "optim.batch_size=128", "optim.micro_batch_size=1"])
    assert memory.estimate_for(attn, 8).merged == 0


def _on_cuda(monkeypatch, tmp_path, gib: float):
    from lora_lab import learner

    monkeypatch.setattr(learner, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(learner, "check_available", lambda model: None)
    monkeypatch.setattr(learner, "model_config", lambda model: AutoConfig.for_model("llama"))
    monkeypatch.setattr(memory, "device_memory", lambda index=0: int(gib * GIB))
    return learner.preflight


PAPER_8B = ["model=llama-3.1-8b", "data=tulu3", "optim.batch_size=128"]


def test_preflight_refuses_a_run_that_does_not_fit_its_gpu(monkeypatch, tmp_path):
    preflight = _on_cuda(monkeypatch, tmp_path, 79.2)
    root = f"run.root={tmp_path}"
    # FullFT of 8B on one 80 GB GPU at the default micro-batch of 8: no micro-batch or checkpointing saves it.
    with pytest.raises(ConfigError) as err:
        preflight(compose([*PAPER_8B, "method=full", root]))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("optim.micro_batch_size=8: meta-llama/Llama-3.1-8B FullFT needs ~")
    assert "the GPU has 79.2 GiB; run on 4 GPUs with optim.micro_batch_size=2 (" in msg and "memory_check=false" in msg
    # LoRA at 8 sequences of 2048 tokens: a smaller micro-batch is the fix it names.
    with pytest.raises(ConfigError, match=r"LoRA r256 all needs ~1\d\d\.\d GiB .* set optim.micro_batch_size=[12]"):
        preflight(compose([*PAPER_8B, "lora.rank=256", root]))
    # What the paper config sets fits; so does anything with the check turned off.
    preflight(compose([*PAPER_8B, "lora.rank=256", "optim.micro_batch_size=2", root]))
    preflight(compose([*PAPER_8B, "method=full", "dist.memory_check=false", root]))


def test_preflight_counts_the_processes_of_the_launch(monkeypatch, tmp_path):
    preflight = _on_cuda(monkeypatch, tmp_path, 79.2)
    full = compose([*PAPER_8B, "method=full", "optim.micro_batch_size=2", f"run.root={tmp_path}"])
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="on 2 process"):
        preflight(full)
    monkeypatch.setenv("WORLD_SIZE", "4")
    preflight(full)


def test_the_cpu_is_not_checked(tmp_path):
    from lora_lab.learner import preflight

    # On the CPU there is no device memory to compare with: the tiny default passes as before.
    preflight(compose([f"run.root={tmp_path}", "optim.micro_batch_size=8"]))


def test_gpus_command_prints_the_count(capsys):
    assert memory.gpus_main(["+experiments=paper/rank_tulu3_llama8b", "method=full"]) == 0
    out = capsys.readouterr().out
    assert "needs 4 GPU(s) of 80 GiB" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2, 4, 8, 16, 32, 64] and {r[1] for r in rows} == {"2"}


def test_memory_check_leaves_the_run_id_alone():
    from lora_lab.runs import run_dir

    assert run_dir(compose(["dist.memory_check=false"])) == run_dir(compose([]))


def test_a_model_the_estimate_does_not_know_is_not_checked(monkeypatch, tmp_path, capsys):
    from lora_lab import flops

    preflight = _on_cuda(monkeypatch, tmp_path, 1.0)

    def unknown(model):
        raise ConfigError("model_type=mamba: not a Llama/Qwen-style decoder")

    monkeypatch.setattr(flops.Arch, "of", staticmethod(unknown))
    preflight(compose([f"run.root={tmp_path}"]))
    assert "memory check skipped: model_type=mamba" in capsys.readouterr().err
