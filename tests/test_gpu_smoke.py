"""experiments/gpu_smoke.py --tiny: the GPU smoke script's code, run on tiny-llama on the CPU (the
GPU run itself needs a GPU: experiments/LOG.md records it)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "experiments" / "gpu_smoke.py"


def test_gpu_smoke_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "smoke.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env={"PATH": "", "TOKENIZERS_PARALLELISM": "false", "HOME": str(tmp_path),
                                                       "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["tiny"] and r["device"] == "cpu" and r["shape"]["name"] == "tiny-llama"
    for key, method in (("lora", "lora"), ("full", "full")):
        c = r[key]
        assert c["method"] == method and c["step_s"] > 0 and len(c["step_s_all"]) == 3
        # No CUDA memory or device peak on the CPU; the estimate and the FLOPs are there.
        assert c["peak_gib"] is None and c["mfu"] is None and c["peak_over_estimate"] is None
        assert c["estimate_gib"] > 0 and c["flops_per_step"] > 0
        assert c["loss"] == c["loss"]  # finite
    assert r["lora"]["trainable"] < r["full"]["trainable"] == r["full"]["params"]
    m = r["bf16_master"]
    assert m["fp32_drop"] > 0 and m["bf16_master_drop"] > 0 and m["ok"], m
    assert r["fsdp2"]["status"] == "skipped" and r["vllm"]["status"] == "skipped"
    table = p.stdout
    assert "| check | result |" in table and "| FSDP2, 2 processes, NCCL | skipped:" in table
    assert str(out) in table
