"""lora-lab: LoRA vs full fine-tuning, from a laptop CPU to SLURM GPU clusters.

    from lora_lab import compose, load_run
    from lora_lab.launch import train
    summary = train(compose(["method=lora", "lora.rank=4", "train.max_steps=20"]))

The package is layered (imports point down only; tests/test_layers.py checks it): config; hub,
answers, models, lora, data, rewards, flops, sampler and the generated tiny world (tiny/); the run
directory (runs), distributed and memory; what SFT and RL share (learner); the loops train and rl,
and launch; slurm below progress -> dispatch -> sweep -> status, reproduce, plan, the analysis
chain results -> noise -> curves -> figures -> sections -> claims -> report, and the cli on top.
"""

__version__ = "0.1.0"
__all__ = ["compose", "load_run", "Config"]


def __getattr__(name):  # lazy: `import lora_lab` stays cheap (no torch import)
    if name in ("compose", "Config"):
        from lora_lab import config

        return getattr(config, name)
    if name == "load_run":
        from lora_lab.runs import load_run

        return load_run
    raise AttributeError(f"module 'lora_lab' has no attribute {name!r}")
