"""data.eval_unseen (lora_lab/tiny/facts.py, lora_lab/data.py, lora_lab/train.py): a tiny-facts run
that also evaluates the unseen facts of tiny-facts-heldout, C9's no-knowledge loss, without changing
its training. The gate that reads it is tested on hand-made run directories in tests/test_report.py."""

import subprocess

import pytest
import torch
from conftest import LORA_LAB

from lora_lab.config import ConfigError, DataConfig, compose
from lora_lab.data import load_unseen, order_seed
from lora_lab.launch import train
from lora_lab.learner import summary_from_final
from lora_lab.models import build_model, load_tokenizer
from lora_lab.runs import RunDir, read_metrics, run_dir, run_id
from lora_lab.tiny.facts import load_tiny_facts, load_tiny_facts_heldout, load_unseen_facts
from lora_lab.train import evaluate

RUN = ["data=tiny-facts", "data.max_seq_len=256", "method=full", "optim.lr=3e-3", "train.max_steps=4",
       "train.eval_every=2"]


def test_unseen_facts_are_the_heldout_sets_eval_rows_and_none_is_trained_on():
    data = DataConfig(name="tiny-facts", num_examples=300, eval_size=40)
    train_rows, reask = load_tiny_facts(data)
    unseen = load_unseen_facts(data)
    assert unseen == load_tiny_facts_heldout(data)[1] and len(unseen) == 40
    trained = {r["messages"][0]["content"] for r in train_rows} | {r["messages"][0]["content"] for r in reask}
    assert not trained & {r["messages"][0]["content"] for r in unseen}


def test_the_key_adds_an_eval_and_leaves_training_bitwise_the_same(small):
    off, on = small(*RUN), small(*RUN, "data.eval_unseen=true")
    assert order_seed(off) == order_seed(on) and run_id(off) != run_id(on)
    s_off, s_on = train(off), train(on)
    assert s_off["status"] == s_on["status"] == "completed"
    lines_off, lines_on = (read_metrics(run_dir(c) / "metrics.jsonl") for c in (off, on))

    def training(lines: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in lines if "train_loss" in r]

    assert training(lines_on) == training(lines_off) and len(training(lines_on)) == 4
    evals_off, evals_on = ([r for r in lines if "eval_loss" in r] for lines in (lines_off, lines_on))
    assert [r["step"] for r in evals_on] == [2, 4]
    assert [(r["eval_loss"], r["eval_bpb"]) for r in evals_on] == [(r["eval_loss"], r["eval_bpb"]) for r in evals_off]
    assert all("eval_unseen_loss" not in r for r in lines_off) and "final_eval_unseen_loss" not in s_off
    assert s_on["final_eval_unseen_loss"] == evals_on[-1]["eval_unseen_loss"] != evals_on[0]["eval_unseen_loss"]
    assert s_on["final_eval_loss"] == s_off["final_eval_loss"]
    w_off, w_on = (RunDir(run_dir(c)).load_checkpoint()["trainable"] for c in (off, on))
    assert w_off.keys() == w_on.keys() and all(torch.equal(w_off[k], w_on[k]) for k in w_off)

    # The logged value is the final model's loss on the unseen facts, and it differs from the re-ask loss.
    tok = load_tokenizer(on.model.name)
    model, _ = build_model(on.model)
    model.load_state_dict(w_on)
    split = load_unseen(on, tok)
    assert len(split) == on.data.eval_size
    again = evaluate(model, split, on.optim.micro_for(1), tok.pad_token_id, torch.device("cpu"))
    assert again == pytest.approx(s_on["final_eval_unseen_loss"], rel=1e-5)
    assert abs(again - s_on["final_eval_loss"]) > 1e-3

    # A summary rebuilt from metrics.jsonl (a final checkpoint written before it carried the summary).
    rd = RunDir(run_dir(on))
    state = rd.load_checkpoint()
    del state["summary"]
    rd.save_checkpoint(state)
    rebuilt = summary_from_final(on, run_id(on), rd)
    assert rebuilt["rebuilt_from"] == "metrics" and rebuilt["final_eval_unseen_loss"] == s_on["final_eval_unseen_loss"]


@pytest.mark.parametrize("data", ["tiny-tulu", "tiny-facts-heldout"])
def test_eval_unseen_on_another_data_set_is_refused(data):
    with pytest.raises(ConfigError, match=f"data.eval_unseen=True: only tiny-facts has an unseen-facts split \\(data={data}\\)"):
        compose([f"data={data}", "data.eval_unseen=true"])


def test_eval_unseen_on_another_data_set_exits_2_before_any_run(tmp_path):
    res = subprocess.run([LORA_LAB, "train", "data=tiny-tulu", "data.eval_unseen=true", f"run.root={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "data.eval_unseen" in res.stderr
    assert "drop it or set data=tiny-facts" in res.stderr and not any(tmp_path.iterdir())


def test_runs_without_the_key_keep_their_ids_and_data_order():
    """At its default the key is left out of the run's identity and of the data order's seed (the
    order seed recorded before the key existed); set, it names a run of its own with the same order."""
    from lora_lab.runs import identity

    cfg, on = compose(["data=tiny-facts"]), compose(["data=tiny-facts", "data.eval_unseen=true"])
    assert cfg.data.eval_unseen is False and "eval_unseen" not in identity(cfg)["data"]
    assert order_seed(cfg) == order_seed(on) == 283305647764826331
    assert identity(on)["data"]["eval_unseen"] is True and run_id(on) != run_id(cfg)
