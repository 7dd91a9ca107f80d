"""The demo path end to end: `alignpipe run configs/tiny.yaml` (the Prefect flow `pipeline` on a
temporary local Prefect server, MLflow on sqlite), exactly what `make demo` runs."""

import json
from pathlib import Path

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
    assert "1 seed(s) [42]" in table[0] and "95% interval" in table[1]
    assert table[2].split() == ["metric", "base", "sft", "dpo", "sft", "vs", "base", "dpo", "vs", "sft"]
    acc = next(line for line in table if line.startswith("acc_seen"))
    assert acc.count("[") == 5 and acc.split()[-1] in ("better", "tied", "worse")  # 3 models, 2 paired differences
    assert any(line.startswith("sft vs base: better on ") for line in table)
    assert any(line.startswith("dpo vs sft: better on ") and ", tied on " in line for line in table)
    gate = next(line for line in table if line.startswith("gate: "))
    assert "(dpo vs sft, 1 seed, tolerance 0.05)" in gate and "registered tiny v1" in gate
    # ... and it ends with the comparison read back from MLflow (`alignpipe compare`)
    comparison = out[out.index("Comparison from MLflow") :].splitlines()
    assert comparison[1].split()[:4] == ["metric", "base", "sft-only", "dpo"]


def test_fine_tuning_helps_on_held_out_data(demo):
    """What the demo claims on any machine: the large effects, each with its interval excluding zero
    (seen on 3 seeds under both AVX512 and AVX2 kernels, with either candidate selected). The small
    differences (DPO vs SFT-only on task accuracy, loss, pair accuracy) are left to the 3-seed table."""
    _, state = demo
    result = json.loads((state / "runs" / "tiny" / "evaluate.json").read_text())
    sft_vs_base, dpo_vs_sft = result["comparisons"]["sft_vs_base"], result["comparisons"]["dpo_vs_sft"]
    for metric in ("heldout_loss", "acc_seen", "pref_margin"):  # SFT teaches the tasks
        assert sft_vs_base[metric]["verdict"] == "better", (metric, sft_vs_base[metric])
    for metric in ("refusal_rate", "pref_margin"):  # DPO's safety pairs teach refusals SFT never saw
        assert dpo_vs_sft[metric]["verdict"] == "better", (metric, dpo_vs_sft[metric])
    # DPO learned the preference: its implicit reward ranks held-out pairs above chance.
    assert result["intervals"]["dpo"]["reward_accuracy"][0] > 0.5, result["intervals"]["dpo"]


def test_every_stage_lands_one_finished_mlflow_run(demo):
    _, state = demo
    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    everything = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert all(r.info.status == "FINISHED" for r in everything)
    evaluate = next(r for r in everything if r.info.run_name == "evaluate")
    per_model = [r for r in everything if r.data.tags.get("mlflow.parentRunId") == evaluate.info.run_id]
    runs = [r for r in everything if r not in per_model]
    assert sorted(r.info.run_name for r in runs) == ["compare", "dpo", "evaluate", "pipeline", "select", "sft"]
    parent = next(r for r in runs if r.info.run_name == "pipeline")
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r is not parent)
    # one run per scored model under evaluate, the same metric names for each, tagged with its role:
    # what MLflow's runs table groups by and its charts set side by side
    assert sorted(r.data.tags["alignpipe.role"] for r in per_model) == ["base", "dpo", "sft"]
    for r in per_model:
        role = r.data.tags["alignpipe.role"]
        assert r.info.run_name == f"eval-{role}" and r.data.tags["alignpipe.pipeline_run"] == parent.info.run_id
        assert r.data.metrics["acc_seen"] == evaluate.data.metrics[f"{role}/acc_seen"]
        assert r.data.metrics["acc_seen_lo"] <= r.data.metrics["acc_seen"] <= r.data.metrics["acc_seen_hi"]
    client = mlflow.MlflowClient()
    assert client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"] == "finetuning"
    gate = json.loads(Path(client.download_artifacts(parent.info.run_id, "gate.json")).read_text())
    assert gate["candidate"] == "dpo" and gate["baseline"] == "sft" and gate["seeds"] == [42]
    assert [c["metric"] for c in gate["checks"]] == ["pref_accuracy", "acc_seen", "refusal_rate"]
    for c in gate["checks"]:  # each check follows the rule from its own interval
        assert c["passed"] == ((c["lo"] if c["direction"] > 0 else -c["hi"]) >= -gate["tolerance"]), c
    dpo = next(r for r in runs if r.info.run_name == "dpo")
    version = client.get_model_version("tiny", gate["registered"]["version"])
    assert version.run_id == dpo.info.run_id
    aliases = client.get_registered_model("tiny").aliases
    assert ("champion" in aliases) == gate["passed"]  # the alias moves only when the gate passes
    evaluate = next(r for r in runs if r.info.run_name == "evaluate")
    for model in ("base", "sft", "dpo"):
        assert {f"{model}/acc_seen", f"{model}/acc_seen_lo", f"{model}/acc_seen_hi"} <= set(evaluate.data.metrics)
    assert {"dpo_vs_sft/acc_seen_delta", "dpo_vs_sft/acc_seen_lo", "dpo_vs_sft/acc_seen_hi"} <= set(
        evaluate.data.metrics
    )
