"""Light commands stay light: help, show-config, status, a dry run and a bad config import neither
torch nor transformers (each costs seconds at start-up)."""

import json
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from lora_lab.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as exc:  # argparse's --help
    rc = exc.code
heavy = sorted(m for m in ("torch", "transformers", "datasets", "peft") if m in sys.modules)
print(json.dumps({"rc": rc, "heavy": heavy}))
"""


@pytest.mark.parametrize("argv, rc", [
    (["--help"], 0),
    (["train", "lora.rnk=3"], 2),
    (["train", "lora.rank=0"], 2),
    (["show-config", "method=full"], 0),
    (["sweep", "tiny/rank", "--dry-run"], 0),
    (["status", "tiny/rank"], 0),
])
def test_light_commands_import_no_torch(argv, rc, tmp_path):
    argv = argv + ([f"run.root={tmp_path}"] if argv[0] in ("show-config", "sweep", "status") else [])
    out = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rc": rc, "heavy": []}, out.stderr[-2000:]
