"""The promotion gate: register the pipeline's final model, and move the `champion` alias to it
only if it matches or beats the baseline model on the configured metrics of the same evaluation."""

from __future__ import annotations

from typing import Any

import mlflow

from alignpipe import tracking
from alignpipe.config import PipelineConfig


def verdict(cfg: PipelineConfig, candidate: str, metrics: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The gate's inputs and decision, for `candidate` (a model label of the evaluation)."""
    from stages.evaluate import HEADLINE

    p = cfg.promote
    baseline = p.baseline if p.baseline in metrics and p.baseline != candidate else "base"
    checks = []
    for name in p.metrics:
        mine, theirs = metrics.get(candidate, {}).get(name), metrics.get(baseline, {}).get(name)
        if mine is None or theirs is None:
            checks.append({"metric": name, candidate: mine, baseline: theirs, "passed": False, "why": "not measured"})
            continue
        direction = HEADLINE.get(name, 1)  # +1: higher is better
        passed = (mine - theirs) * direction >= -p.tolerance
        checks.append({"metric": name, candidate: mine, baseline: theirs, "passed": passed,
                       "why": f"{'>=' if direction > 0 else '<='} {baseline} within {p.tolerance}"})
    return {"candidate": candidate, "baseline": baseline, "tolerance": p.tolerance, "checks": checks,
            "passed": bool(checks) and all(c["passed"] for c in checks)}


def gate_and_register(cfg: PipelineConfig, candidate: str, model_path: str, metrics: dict, parent_run_id: str) -> dict[str, Any]:
    """Register `model_path` (its logged model) under `promote.model_name`; alias it if the gate passes.

    The verdict goes to the parent run (gate.json, tags) and to the model version's tags."""
    if not cfg.promote.enabled:
        return {"passed": None, "skipped": "promote.enabled is false"}
    experiment_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    result = verdict(cfg, candidate, metrics)
    name = cfg.promote.model_name or cfg.experiment
    model_id = tracking.find_model(model_path, experiment_id)
    if model_id is None:
        result["registered"] = None
        result["why_not_registered"] = f"no logged model for {model_path} in experiment {cfg.experiment}"
    else:
        version = _version_of(client, name, model_id) or mlflow.register_model(f"models:/{model_id}", name).version
        client.set_model_version_tag(name, version, "alignpipe.gate", "passed" if result["passed"] else "failed")
        client.set_model_version_tag(name, version, "alignpipe.pipeline_run", parent_run_id)
        if result["passed"]:
            client.set_registered_model_alias(name, cfg.promote.alias, version)
        result["registered"] = {"name": name, "version": str(version), "model_id": model_id,
                                "alias": cfg.promote.alias if result["passed"] else None}
    client.log_dict(parent_run_id, result, "gate.json")
    client.set_tag(parent_run_id, "alignpipe.gate", "passed" if result["passed"] else "failed")
    client.log_metric(parent_run_id, "gate_passed", float(result["passed"]))
    for label, values in metrics.items():
        for key, value in values.items():
            if value is not None:
                client.log_metric(parent_run_id, f"{label}/{key}", value)
    failed = [c["metric"] for c in result["checks"] if not c["passed"]]
    print(f"gate: {candidate} vs {result['baseline']} on {', '.join(cfg.promote.metrics)}: "
          + ("passed" if result["passed"] else f"failed on {', '.join(failed)}")
          + (f"; registered {name} v{result['registered']['version']}" if result.get("registered") else "")
          + (f", alias '{cfg.promote.alias}' moved to it" if result["passed"] and result.get("registered") else ""))
    return result


def _version_of(client, name: str, model_id: str) -> str | None:
    """The existing version of `name` holding this logged model (a re-run does not register twice)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    for v in versions:
        if v.source == f"models:/{model_id}" or getattr(v, "model_id", None) == model_id:
            return v.version
    return None
