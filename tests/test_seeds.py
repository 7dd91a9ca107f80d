"""`alignpipe run --seeds N`: sft and the preference stage trained once per seed, each its own cached
Prefect task and MLflow run under one parent; evaluation, gate and comparison over the seed group."""

import json
from pathlib import Path

import mlflow
import pytest

from conftest import SMALL_CANDIDATE, run_cli

pytestmark = pytest.mark.slow

FAST = [
    SMALL_CANDIDATE,
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=8",
    "sft.save_steps=4",
    "preference.max_steps=4",
    "preference.save_steps=2",
    "preference.per_device_train_batch_size=8",
    "evaluate.max_new_tokens=8",
    "evaluate.num_samples=4",
]


def _run(state, *extra):
    args = [a for o in FAST for a in ("--set", o)]
    return run_cli("run", "configs/tiny.yaml", *args, *extra, env={"ALIGNPIPE_HOME": str(state)}, timeout=1200)


def _runs(state, name):
    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    return mlflow.search_runs(
        experiment_names=["tiny"], filter_string=f"attributes.run_name = '{name}'", output_format="list"
    )


def test_seeds_train_each_seed_and_report_the_group(tmp_path):
    state = tmp_path / "state"
    proc = _run(state, "--seeds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "Error encountered" not in proc.stderr + out  # e.g. a cache key that cannot digest a seed group
    assert "2 seed(s) [42, 43]" in out and "dpo vs sft: " in out and "gate: " in out and "2 seeds" in out
    comparison = out[out.index("Comparison from MLflow") :].splitlines()
    assert comparison[1].split()[:6] == [
        "metric",
        "base",
        "sft-only",
        "(2",
        "seeds)",
        "dpo",
    ]  # base: not trained per seed

    parent = _runs(state, "pipeline")[0]
    for stage in ("sft", "dpo"):
        runs = _runs(state, stage)
        assert sorted(r.data.params["seed"] for r in runs) == ["42", "43"], stage
        assert all(
            r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED" for r in runs
        )

    evaluate = _runs(state, "evaluate")[0]
    assert evaluate.data.params["n_seeds"] == "2"
    client = mlflow.MlflowClient()
    evaluation = json.loads(Path(client.download_artifacts(evaluate.info.run_id, "evaluation.json")).read_text())
    assert evaluation["seeds"] == [42, 43] and len(evaluation["per_seed"]) == 2 and len(evaluation["items"]) == 2
    d = evaluation["comparisons"]["dpo_vs_sft"]["pref_margin"]
    assert len(d["per_seed"]) == 2 and d["lo"] <= d["delta"] <= d["hi"] and d["sd"] >= 0
    assert set(evaluation["seed_sd"]) == {"base", "sft", "dpo"} and evaluation["seed_sd"]["base"]["acc_seen"] == 0
    assert d["delta"] == pytest.approx(sum(d["per_seed"]) / 2, abs=1e-3)
    gate = json.loads(Path(client.download_artifacts(parent.info.run_id, "gate.json")).read_text())
    assert gate["seeds"] == [42, 43] and "non-inferiority" in gate["rule"]
    assert all({"delta", "lo", "hi", "verdict"} <= set(c) for c in gate["checks"])

    # One more seed: the two trained ones are reused (cached), only the new seed trains.
    proc = _run(state, "--seeds", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(r.data.params["seed"] for r in _runs(state, "sft")) == ["42", "43", "44"]
    assert "3 seed(s) [42, 43, 44]" in proc.stdout
