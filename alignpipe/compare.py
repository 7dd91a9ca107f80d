"""`alignpipe compare`: base, SFT-only and preference-tuned models side by side, from MLflow.

Rows come from the experiment's finished `evaluate` runs, newest first, all on the same
evaluation suite (the newest run's eval data digest); each model label keeps its newest numbers.
The table and a bar chart (PNG) are logged to a `compare` run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

ORDER = ("base", "sft")
LABELS = {"sft": "sft-only"}


def collect(experiment: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """({model label: metrics}, {model label: evaluate run id}) from the tracking store in use."""
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return {}, {}
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id], "tags.`alignpipe.stage` = 'evaluate' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=200,
    )
    if not runs:
        return {}, {}
    suite = runs[0].data.params.get("eval_digest")
    table: dict[str, dict[str, float]] = {}
    sources: dict[str, str] = {}
    for run in runs:
        if run.data.params.get("eval_digest") != suite:
            continue
        found: dict[str, dict[str, float]] = {}
        for key, value in run.data.metrics.items():
            label, _, metric = key.partition("/")
            if metric:
                found.setdefault(label, {})[metric] = value
        for label, values in found.items():
            if label not in table:
                table[label], sources[label] = values, run.info.run_id
    ordered = [k for k in ORDER if k in table] + sorted(k for k in table if k not in ORDER)
    return {k: table[k] for k in ordered}, {k: sources[k] for k in ordered}


def report(experiment: str, tracking_uri: str, parent_run_id: str | None = None) -> str:
    """Print-ready table; logs it, its sources and a PNG to a new `compare` run."""
    from stages.evaluate import format_table

    from alignpipe.tracking import use_uri

    use_uri(tracking_uri)
    table, sources = collect(experiment)
    if not table:
        return f"no finished evaluate runs in experiment '{experiment}' at {tracking_uri}: run the pipeline first"
    shown = {LABELS.get(k, k): v for k, v in table.items()}
    text = format_table(shown)
    exp = mlflow.get_experiment_by_name(experiment)
    with mlflow.start_run(experiment_id=exp.experiment_id, run_name="compare", parent_run_id=parent_run_id, nested=True,
                          tags={"alignpipe.stage": "compare"}):
        mlflow.log_text(text, "comparison.txt")
        mlflow.log_dict({"metrics": shown, "evaluate_runs": {LABELS.get(k, k): v for k, v in sources.items()}}, "comparison.json")
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "comparison.png"
            plot(shown, png)
            mlflow.log_artifact(str(png))
    return text


def plot(table: dict[str, dict[str, float]], out: Path) -> Path:
    """Grouped bars: one group per headline metric, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.evaluate import HEADLINE

    metrics = [m for m in list(HEADLINE) + ["reward_accuracy", "rm_win_rate"] if any(m in v for v in table.values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        values = [table[k].get(metric) or 0.0 for k in table]
        ax.bar(range(len(table)), values, color=[f"C{i}" for i in range(len(table))])
        ax.set_xticks(range(len(table)), list(table), rotation=45, fontsize=7)
        arrow = "↑" if HEADLINE.get(metric, 1) > 0 else "↓"
        ax.set_title(f"{metric} {arrow}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

