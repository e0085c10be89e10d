"""The tiny presets' architectures (tiny-llama, tiny-moe): the transformers configs that
`lora-lab build-tiny` (tiny/pretrain.py) pretrains and lora_lab/models.py builds when a preset is
named. Their weights and tokenizer ship in lora_lab/assets/.
"""

from __future__ import annotations

# Sized so that a few hundred steps of batch 32 run in minutes on a 2-core CPU.
TINY_CONFIGS: dict[str, dict] = {
    "tiny-llama": dict(
        model_type="llama", hidden_size=128, intermediate_size=384, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
    ),
    # The width ladder (issue: how the LoRA/FullFT LR ratio moves with width): tiny-llama at other
    # widths, same depth, head size 32 (heads = hidden / 32, a quarter of them key/value heads, at
    # least one) and MLP 3x hidden, each pretrained on the same corpus with the same tokens per
    # parameter (pretrain.BUILD_DEFAULTS).
    "tiny-llama-w64": dict(
        model_type="llama", hidden_size=64, intermediate_size=192, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
    ),
    "tiny-llama-w256": dict(
        model_type="llama", hidden_size=256, intermediate_size=768, num_hidden_layers=3,
        num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=False,
    ),
    "tiny-moe": dict(
        model_type="qwen3_moe", hidden_size=128, intermediate_size=384, moe_intermediate_size=128,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[], max_position_embeddings=1024, rope_theta=10000.0, rms_norm_eps=1e-6,
        tie_word_embeddings=False, router_aux_loss_coef=0.0, output_router_logits=False,
    ),
}


def tiny_config(name: str, vocab_size: int, **overrides):
    """The preset's transformers config; `overrides` replace or add config fields (architecture
    changes for test builds and benches, special token ids)."""
    from transformers import AutoConfig

    kw = {**TINY_CONFIGS[name], **overrides}
    model_type = kw.pop("model_type")
    return AutoConfig.for_model(model_type, vocab_size=vocab_size, **kw)
