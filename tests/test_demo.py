"""The demo path end to end: `alignpipe run configs/tiny.yaml` (the Prefect flow `pipeline` on a
temporary local Prefect server, MLflow on sqlite), exactly what `make demo` runs."""

import json

import mlflow
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    state = tmp_path_factory.mktemp("demo-state")
    proc = run_cli("run", "configs/tiny.yaml", env={"ALIGNPIPE_HOME": str(state)}, timeout=1200)
    return proc, state


def test_demo_completes_and_prints_the_table(demo):
    proc, _ = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Traceback" not in proc.stderr
    assert "select: tiny-" in out and "lowest held-out response perplexity" in out
    table = out[out.index("Evaluation on the frozen suite") :].splitlines()
    assert [line.split()[0] for line in table[2:5]] == ["base", "sft", "dpo"]
    # ... and it ends with the comparison read back from MLflow (`alignpipe compare`)
    comparison = out[out.index("Comparison from MLflow") :].splitlines()
    assert [line.split()[0] for line in comparison[2:5]] == ["base", "sft-only", "dpo"]
    assert "gate: passed (dpo vs sft); registered tiny v1, alias champion" in out


def test_fine_tuning_helps_on_held_out_data(demo):
    """What the demo claims, measured honestly on data never trained on."""
    _, state = demo
    m = json.loads((state / "runs" / "tiny" / "evaluate.json").read_text())["metrics"]
    base, sft, dpo = m["base"], m["sft"], m["dpo"]
    # SFT-only beats the base model.
    assert sft["heldout_loss"] < base["heldout_loss"]
    assert sft["acc_seen"] > base["acc_seen"]
    assert sft["refusal_rate"] > base["refusal_rate"]
    assert sft["over_refusal"] <= base["over_refusal"] + 0.02
    # DPO beats SFT-only on the preference metrics, and keeps task accuracy and refusals
    # (within one answer of the ~140 task / 20 unsafe prompts: greedy decoding is brittle).
    assert dpo["pref_accuracy"] >= sft["pref_accuracy"] and dpo["pref_margin"] > sft["pref_margin"]
    assert dpo["reward_accuracy"] > 0.5 and dpo["reward_margin"] > 0
    assert dpo["acc_seen"] >= sft["acc_seen"] - 0.01
    assert dpo["refusal_rate"] >= sft["refusal_rate"] - 0.05
    assert dpo["over_refusal"] <= sft["over_refusal"] + 0.01


def test_every_stage_lands_one_finished_mlflow_run(demo):
    _, state = demo
    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert sorted(r.info.run_name for r in runs) == ["compare", "dpo", "evaluate", "pipeline", "select", "sft"]
    assert all(r.info.status == "FINISHED" for r in runs)
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r is not parent)
    champion = mlflow.MlflowClient().get_model_version_by_alias("tiny", "champion")
    dpo = next(r for r in runs if r.info.run_name == "dpo")
    assert champion.run_id == dpo.info.run_id  # the DPO model passed the gate
    evaluate = next(r for r in runs if r.info.run_name == "evaluate")
    for model in ("base", "sft", "dpo"):
        assert f"{model}/acc_seen" in evaluate.data.metrics
