"""The promotion gate: register the pipeline's final model, and move the `champion` alias to it
only if it is non-inferior to the baseline model on every configured metric: the lower bound of
the paired difference's 95% interval (oriented so that positive is better) must be at least
`-promote.tolerance`."""

from __future__ import annotations

from typing import Any

import mlflow

from alignpipe import tracking
from alignpipe.core.config import PipelineConfig
from alignpipe.core.files import file_lock
from alignpipe.core.result import StageResult
from alignpipe.evaluation import stats

RULE = (
    "non-inferiority: pass a metric when the lower bound of the 95% interval of the paired difference "
    "(candidate - baseline, oriented so that positive is better) is >= -tolerance; "
    "pass the gate when every metric passes"
)


def verdict(cfg: PipelineConfig, candidate: str, evaluation: StageResult) -> dict[str, Any]:
    """The gate's inputs and decision for `candidate` (a model label of the evaluation), from the
    evaluation's paired differences (`comparisons`) and point values (`metrics`)."""
    p = cfg.promote
    metrics, comparisons = evaluation.metrics, evaluation.details.get("comparisons", {})
    baseline = p.baseline if p.baseline in metrics and p.baseline != candidate else "base"
    diffs = comparisons.get(f"{candidate}_vs_{baseline}", {})
    checks = []
    for name in p.metrics:
        d = diffs.get(name)
        mine, theirs = metrics.get(candidate, {}).get(name), metrics.get(baseline, {}).get(name)
        if d is None:
            checks.append({"metric": name, candidate: mine, baseline: theirs, "passed": False, "why": "not measured"})
            continue
        passed = stats.non_inferior(d, p.tolerance)
        bound = stats.oriented_lower(d)
        checks.append(
            {
                "metric": name,
                candidate: mine,
                baseline: theirs,
                "delta": d["delta"],
                "lo": d["lo"],
                "hi": d["hi"],
                "direction": d["direction"],
                "verdict": d["verdict"],
                "per_seed": d.get("per_seed"),
                "passed": passed,
                "why": f"oriented lower bound {bound:+.4f} {'>=' if passed else '<'} -{p.tolerance}",
            }
        )
    return {
        "candidate": candidate,
        "baseline": baseline,
        "tolerance": p.tolerance,
        "rule": RULE,
        "seeds": evaluation.details.get("seeds"),
        "interval_method": stats.METHOD,
        "checks": checks,
        "passed": bool(checks) and all(c["passed"] for c in checks),
    }


def verdict_line(result: dict[str, Any]) -> str:
    """`passed (dpo vs sft, 3 seeds): better on pref_accuracy; tied on acc_seen; worse on -`."""
    by = {w: [c["metric"] for c in result["checks"] if c.get("verdict") == w] for w in ("better", "tied", "worse")}
    unmeasured = [c["metric"] for c in result["checks"] if "verdict" not in c]
    failed = [c["metric"] for c in result["checks"] if not c["passed"]]
    seeds = result.get("seeds") or []
    text = (
        f"{'passed' if result['passed'] else 'failed'} ({result['candidate']} vs {result['baseline']}, "
        f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}, tolerance {result['tolerance']}): "
        + "; ".join(f"{w} on {', '.join(v) or '-'}" for w, v in by.items())
    )
    if unmeasured:
        text += f"; not measured: {', '.join(unmeasured)}"
    if failed:
        text += f"; fails on {', '.join(failed)}"
    return text


def gate_and_register(
    cfg: PipelineConfig, candidate: str, model_path: str, evaluation: StageResult, parent_run_id: str
) -> dict[str, Any]:
    """Register `model_path` (its logged model) under `promote.model_name`; alias it if the gate passes.

    The verdict goes to the parent run (gate.json, tags) and to the model version's tags."""
    if not cfg.promote.enabled:
        return {"passed": None, "skipped": "promote.enabled is false"}
    experiment_id = tracking.setup(cfg)
    client = mlflow.MlflowClient()
    result = verdict(cfg, candidate, evaluation)
    name = cfg.promote.model_name or cfg.experiment
    model_id = tracking.find_model(model_path, experiment_id)
    if model_id is None:
        result["registered"] = None
        result["why_not_registered"] = f"no logged model for {model_path} in experiment {cfg.experiment}"
    else:
        # runs at once in one home register one at a time: the same model is one version, not two
        with file_lock(cfg.state_path / "locks" / f"registry-{name}.lock"):
            version = _version_of(client, name, model_id) or mlflow.register_model(f"models:/{model_id}", name).version
            client.set_model_version_tag(name, version, "alignpipe.gate", "passed" if result["passed"] else "failed")
            client.set_model_version_tag(name, version, "alignpipe.pipeline_run", parent_run_id)
            if result["passed"]:
                client.set_registered_model_alias(name, cfg.promote.alias, version)
        result["registered"] = {
            "name": name,
            "version": str(version),
            "model_id": model_id,
            "alias": cfg.promote.alias if result["passed"] else None,
        }
    client.log_dict(parent_run_id, result, "gate.json")
    client.set_tag(parent_run_id, "alignpipe.gate", "passed" if result["passed"] else "failed")
    client.log_metric(parent_run_id, "gate_passed", float(result["passed"]))
    for label, values in evaluation.metrics.items():
        for key, value in values.items():
            if value is not None:
                client.log_metric(parent_run_id, f"{label}/{key}", value)
    for check in result["checks"]:
        if "delta" in check:
            for f in ("delta", "lo", "hi"):
                client.log_metric(parent_run_id, f"gate/{check['metric']}_{f}", check[f])
    print(
        f"gate: {verdict_line(result)}"
        + (f"; registered {name} v{result['registered']['version']}" if result.get("registered") else "")
        + (f", alias '{cfg.promote.alias}' moved to it" if result["passed"] and result.get("registered") else "")
    )
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
