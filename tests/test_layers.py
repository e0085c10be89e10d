"""The package's layering: imports point down, never in a circle, and the config module is a leaf.

The graph is built from the source with `ast`: every `import` / `from ... import` anywhere in a
module (function bodies and `if TYPE_CHECKING:` blocks included), so a cycle cannot hide inside a
function. Also: the names config.py checks against, kept there as plain tuples, equal the registries
they mirror; and the run ids of the tiny experiments are the ones recorded before the package was
reorganised (a relaunched grid must find its finished runs)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lora_lab"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the lora_lab modules it imports}, for every module of the package."""
    files = {module_name(p, package): p for p in package.rglob("*.py") if "assets" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from package parents
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in files:  # lora_lab.runs.RunDir -> lora_lab.runs
                    t = t.rpartition(".")[0]
                if t and t not in (mod, "lora_lab"):
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "lora_lab"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from lora_lab.b import g\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lora_lab import a\n")
    (pkg / "sub" / "c.py").write_text("from ..b import g\nfrom . import d\n")
    (pkg / "sub" / "d.py").write_text("")
    graph = import_graph(pkg)
    assert graph["lora_lab.a"] == {"lora_lab.b"} and graph["lora_lab.b"] == {"lora_lab.a"}
    assert graph["lora_lab.sub.c"] == {"lora_lab.b", "lora_lab.sub", "lora_lab.sub.d"}  # `from . import d` runs sub/__init__.py
    assert cycles(graph) == [["lora_lab.a", "lora_lab.b"]]


def test_no_import_cycle_in_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles (function-level imports count): " + "; ".join(" <-> ".join(c) for c in found)


def test_config_imports_nothing_of_lora_lab():
    assert import_graph()["lora_lab.config"] == set()


def test_the_sibling_loops_never_import_each_other():
    graph = import_graph()
    assert "lora_lab.rl" not in graph["lora_lab.train"] and "lora_lab.train" not in graph["lora_lab.rl"]


def test_the_names_config_checks_against_are_the_registries():
    from lora_lab import config, data, rewards
    from lora_lab.tiny.presets import TINY_CONFIGS
    from lora_lab.tiny.world import TINY_DATASETS

    assert set(config.TINY_PRESETS) == set(TINY_CONFIGS)

    assert set(config.TINY_DATA_SETS) == set(TINY_DATASETS)
    assert set(config.REAL_DATA_SETS) == set(data.REAL_SETS)
    assert set(config.DATA_SETS) == set(data.DATASETS)
    assert set(config.RL_DATA_SETS) == set(rewards.TASKS)


# Recorded with the package as it was before it was reorganised into layers (`expand` of each
# experiment; first, middle and last run of the grid, all seed 0). Those runs trained without the
# lm_head adapter, with Adam's beta2 0.999 and eps 1e-8 (the defaults since are the paper's: an
# lm_head adapter, beta2 0.95, eps 1e-12) and before tiny/rl logged a validation split: relaunched
# with those settings, each grid point lands in its recorded run. (arm, the grid point, recorded id.)
BEFORE = ["optim.beta2=0.999", "optim.adam_eps=1e-8", "train.seed=0"]
RECORDED_RUN_IDS = {
    "tiny/rank": [("lora", ["lora.rank=1", "optim.lr=1e-3"], "tiny-llama_tiny-tulu_lora-r1-all_lr1e-3_bs32_s0_5c8aecfb"),
                  ("lora", ["lora.rank=16", "optim.lr=3e-3"], "tiny-llama_tiny-tulu_lora-r16-all_lr3e-3_bs32_s0_dbe1f8ec"),
                  ("full", ["optim.lr=3e-3"], "tiny-llama_tiny-tulu_full_lr3e-3_bs32_s0_5f3fcef6")],
    "tiny/rl": [("lora", ["lora.rank=1", "optim.lr=1e-4", "rl.val_size=0"], "tiny-llama_tiny-math_lora-r1-all_lr1e-4_rl16x8_s0_4f10c73e"),
                ("lora", ["lora.rank=32", "optim.lr=1e-4", "rl.val_size=0"], "tiny-llama_tiny-math_lora-r32-all_lr1e-4_rl16x8_s0_fc975387"),
                ("full", ["optim.lr=1e-4", "rl.val_size=0"], "tiny-llama_tiny-math_full_lr1e-4_rl16x8_s0_e90c67ca")],
    "tiny/layers": [("lora", ["lora.layers=attn", "optim.lr=1e-3"], "tiny-llama_tiny-tulu_lora-r8-attn_lr1e-3_bs32_s0_1b70d2b2"),
                    ("lora", ["lora.layers=all", "optim.lr=3e-3"], "tiny-llama_tiny-tulu_lora-r8-all_lr3e-3_bs32_s0_70050fce"),
                    ("full", ["optim.lr=3e-3"], "tiny-llama_tiny-tulu_full_lr3e-3_bs32_s0_5f3fcef6")],
    "tiny/batch": [("lora", ["optim.batch_size=8", "optim.lr=1e-3"], "tiny-llama_tiny-tulu_lora-r4-all_lr1e-3_bs8_s0_6bba0800"),
                   ("full", ["optim.batch_size=8", "optim.lr=3e-4"], "tiny-llama_tiny-tulu_full_lr3e-4_bs8_s0_140c01a3"),
                   ("full", ["optim.batch_size=128", "optim.lr=3e-3"], "tiny-llama_tiny-tulu_full_lr3e-3_bs128_s0_9a819dee")],
    "tiny/invariance": [("base", [], "tiny-llama_tiny-tulu_lora-r8-all_lr3e-3_bs32_s0_9bc55339"),
                        ("p0.5_q2", [], "tiny-llama_tiny-tulu_lora-r8-all_lr3e-3_bs32_s0_85c4b8df"),
                        ("control", [], "tiny-llama_tiny-tulu_lora-r8-all_lr3e-3_bs32_s0_3193b28a")],
    "tiny/capacity": [("lora_r1", ["lora.rank=1", "optim.lr=1e-2", "data.num_examples=256", "train.epochs=4"],
                       "tiny-llama_tiny-facts_lora-r1-all_lr1e-2_bs32_s0_e952a297"),
                      ("lora_r8", ["lora.rank=8", "optim.lr=1e-2", "data.num_examples=2048", "train.epochs=4"],
                       "tiny-llama_tiny-facts_lora-r8-all_lr1e-2_bs32_s0_c3580a3f"),
                      # recorded before its FullFT arm evaluated unseen facts as well (data.eval_unseen)
                      ("full", ["optim.lr=1e-3", "data.num_examples=2048", "train.epochs=4", "data.eval_unseen=false"],
                       "tiny-llama_tiny-facts_full_lr1e-3_bs32_s0_7c1fed51")],
}


def _recorded_point(experiment: str, arm: str, point: list[str], root) -> object:
    from lora_lab.sweep import expand

    before = BEFORE + (["lora.unembed=false"] if arm != "full" else [])  # FullFT has no LoRA keys
    if experiment == "tiny/invariance":
        before = [o for o in before if not o.startswith("optim.adam_eps")]  # eps 0: the experiment's own
    cfgs = expand(experiment, [f"run.root={root}", *before, *point], arms=[arm])
    assert len(cfgs) == 1, [c.run for c in cfgs]
    return cfgs[0]


@pytest.mark.parametrize("experiment", sorted(RECORDED_RUN_IDS))
def test_runs_of_the_tiny_experiments_made_before_are_found_again(experiment, tmp_path):
    """Their ids as recorded, and a relaunch of the grid point lands in them. (The checkpoint and
    eval intervals have left the identity since, so grids that set them get new ids for new runs.)"""
    from lora_lab.runs import legacy_run_id, run_dir

    for arm, point, rid in RECORDED_RUN_IDS[experiment]:
        cfg = _recorded_point(experiment, arm, point, tmp_path)
        assert legacy_run_id(cfg) == rid
        (tmp_path / cfg.run.experiment / rid).mkdir(parents=True)
        assert run_dir(cfg).name == rid


def test_quick_run_ids_are_unchanged():
    from lora_lab.runs import legacy_run_id
    from lora_lab.sweep import expand

    cfgs = expand("tiny/rank", ["optim.beta2=0.999", "optim.adam_eps=1e-8"], quick=True)
    assert legacy_run_id(cfgs[-1]) == "tiny-llama_tiny-tulu_full_lr3e-3_bs32_s0_630e225c"
    cfgs = expand("tiny/rank", ["optim.beta2=0.999", "optim.adam_eps=1e-8", "lora.unembed=false"], quick=True, arms=["lora"])
    assert legacy_run_id(cfgs[0]) == "tiny-llama_tiny-tulu_lora-r1-all_lr3e-4_bs32_s0_814628e2"


def test_runs_with_the_default_schedule_keep_their_ids(tmp_path):
    from lora_lab.runs import run_id

    # eval and checkpoint every 50 steps: the defaults
    for arm, point, rid in RECORDED_RUN_IDS["tiny/rl"]:
        assert run_id(_recorded_point("tiny/rl", arm, point, tmp_path)) == rid


