"""`alignpipe compare`: base, SFT-only and preference-tuned models side by side (and, with
distillation, the teacher and the student SFT-only and distilled), from MLflow.

Rows come from the experiment's finished `evaluate` runs, newest first, all on the same
evaluation suite (the newest run's eval data digest); each model label keeps its newest numbers,
with their 95% intervals, and the number of seeds they average (a seed group: one model per
training seed). Paired differences come from the newest run that measured both models. The
table and a bar chart with error bars (PNG) are logged to a `compare` run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from alignpipe.core.config import DISTILL_LABELS
from alignpipe.core.registry import PREFERENCE_METHODS
from alignpipe.evaluation import stats
from alignpipe.tracking import use_uri

ORDER = ("base", "sft", *PREFERENCE_METHODS, *DISTILL_LABELS)
LABELS = {"sft": "sft-only", "student_sft": "student sft-only", "student_distill": "student distilled"}


def collect(experiment: str) -> dict:
    """{"metrics": {label: {metric: value}}, "intervals": {label: {metric: [lo, hi]}},
    "comparisons": {"a_vs_b": {metric: {delta, lo, hi, direction, verdict}}}, "runs": {label: run id},
    "seeds": {label: n}} from the tracking store in use."""
    empty = {"metrics": {}, "intervals": {}, "comparisons": {}, "runs": {}, "seeds": {}}
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return empty
    runs = mlflow.MlflowClient().search_runs(
        [exp.experiment_id],
        "tags.`alignpipe.stage` = 'evaluate' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=200,
    )
    if not runs:
        return empty
    suite = runs[0].data.params.get("eval_digest")
    out = empty
    for run in runs:
        if run.data.params.get("eval_digest") != suite:
            continue
        values: dict[str, dict[str, float]] = {}
        for key, value in run.data.metrics.items():
            label, _, metric = key.partition("/")
            if metric:
                values.setdefault(label, {})[metric] = value
        for label, found in values.items():
            if "_vs_" in label:
                if label not in out["comparisons"]:
                    out["comparisons"][label] = _differences(found)
            elif label not in out["metrics"]:
                out["metrics"][label] = {k: v for k, v in found.items() if not k.endswith(("_lo", "_hi"))}
                out["intervals"][label] = {
                    k: [found[f"{k}_lo"], found[f"{k}_hi"]]
                    for k in out["metrics"][label]
                    if f"{k}_lo" in found and f"{k}_hi" in found
                }
                out["runs"][label] = run.info.run_id
                out["seeds"][label] = int(run.data.params.get(f"n_seeds.{label}", 1))
    ordered = [k for k in ORDER if k in out["metrics"]] + sorted(k for k in out["metrics"] if k not in ORDER)
    for part in ("metrics", "intervals", "runs", "seeds"):
        out[part] = {k: out[part][k] for k in ordered if k in out[part]}
    return out


def _differences(found: dict[str, float]) -> dict[str, dict]:
    diffs = {}
    for key, value in found.items():
        if key.endswith("_delta"):
            k = key[: -len("_delta")]
            lo, hi = found.get(f"{k}_lo"), found.get(f"{k}_hi")
            if lo is not None and hi is not None:
                direction = stats.DIRECTIONS.get(k, 1)
                diffs[k] = {
                    "delta": value,
                    "lo": lo,
                    "hi": hi,
                    "direction": direction,
                    "verdict": stats.verdict(lo, hi, direction),
                }
    return diffs


def _shown_as(label: str) -> str:
    return LABELS.get(label, label)


def _shown(label: str, seeds: int) -> str:
    name = LABELS.get(label, label)
    return f"{name} ({seeds} seeds)" if seeds > 1 else name


def report(experiment: str, tracking_uri: str, parent_run_id: str | None = None) -> str:
    """Print-ready table; logs it, its sources and a PNG to a new `compare` run."""
    use_uri(tracking_uri)
    found = collect(experiment)
    if not found["metrics"]:
        return f"no finished evaluate runs in experiment '{experiment}' at {tracking_uri}: run the pipeline first"
    names = {k: _shown(k, found["seeds"].get(k, 1)) for k in found["metrics"]}
    shown = {names[k]: v for k, v in found["metrics"].items()}
    intervals = {names[k]: v for k, v in found["intervals"].items()}
    comparisons = {}
    for pair, diffs in found["comparisons"].items():
        a, _, b = pair.partition("_vs_")
        if a in names and b in names:
            comparisons[f"{names[a]}_vs_{names[b]}"] = diffs
    exp = mlflow.get_experiment_by_name(experiment)
    text = format_table(shown, intervals, comparisons) + _base_model_line(exp.experiment_id)
    with mlflow.start_run(
        experiment_id=exp.experiment_id,
        run_name="compare",
        parent_run_id=parent_run_id,
        nested=True,
        tags={"alignpipe.stage": "compare"},
    ):
        mlflow.log_text(text, "comparison.txt")
        mlflow.log_dict(
            {
                "metrics": shown,
                "intervals": intervals,
                "comparisons": comparisons,
                "interval_method": stats.METHOD,
                "evaluate_runs": {names[k]: v for k, v in found["runs"].items()},
            },
            "comparison.json",
        )
        with tempfile.TemporaryDirectory() as tmp:
            png = Path(tmp) / "comparison.png"
            plot(shown, png, intervals)
            mlflow.log_artifact(str(png))
    return text


def _base_model_line(experiment_id: str) -> str:
    """`\nbase model: NAME (source)` from the newest finished select run, or "" without one."""
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        "tags.`alignpipe.stage` = 'select' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs or "alignpipe.selected" not in runs[0].data.tags:
        return ""
    tags = runs[0].data.tags
    sha = tags.get("alignpipe.input_model.selected.gguf_sha256")
    source = (
        f"GGUF {tags['alignpipe.input_model.selected.gguf_source']}, sha256 {sha[:16]}"
        if sha
        else tags.get("alignpipe.selected_source", "?")
    )
    return f"\nbase model: {tags['alignpipe.selected']} ({source})"


def format_table(
    metrics: dict[str, dict[str, float]], intervals: dict | None = None, comparisons: dict | None = None
) -> str:
    """One row per metric (arrow: which way is better), one column per model (`value [lo, hi]`),
    then each model's paired difference against the model before it (the teacher aside: it is
    compared with the students, not with the model before it), marked better/tied/worse."""
    intervals, comparisons = intervals or {}, comparisons or {}
    extra = ["reward_accuracy", "reward_margin", "rm_score", "rm_win_rate"]
    keys = [k for k in list(stats.HEADLINE) + extra if any(m.get(k) is not None for m in metrics.values())]
    names = list(metrics)
    teacher = next((n for n in names if n.startswith(_shown_as("teacher"))), None)
    chain = [f"{a}_vs_{b}" for b, a in zip(names, names[1:]) if a != teacher]  # each model vs the one before it
    chain += [f"{n}_vs_{teacher}" for n in names if teacher]  # and every student vs the teacher
    chain = [c for c in dict.fromkeys(chain) if c in comparisons]
    head = ["metric"] + names + [c.replace("_vs_", " vs ") for c in chain]
    lines = [head]
    for k in keys:
        arrow = "↑" if stats.DIRECTIONS.get(k, 1) > 0 else "↓"
        cells = [f"{k} {arrow}"]
        for name in names:
            lo_hi = intervals.get(name, {}).get(k)
            cells.append(stats.fmt(metrics[name].get(k), *(lo_hi or (None, None))))
        for c in chain:
            d = comparisons[c].get(k)
            cells.append(f"{stats.fmt(d['delta'], d['lo'], d['hi'], signed=True)} {d['verdict']}" if d else "-")
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(r, widths))).rstrip()
        for r in lines
    )


def verdict_lines(comparisons: dict, pairs: list[tuple[str, str]]) -> list[str]:
    """`dpo vs sft: better on 2 (...), tied on 5 (...), worse on 0 (-)`, by the paired intervals."""
    out = []
    for a, b in pairs:
        diffs = comparisons.get(f"{a}_vs_{b}")
        if not diffs:
            continue
        parts = []
        for word in ("better", "tied", "worse"):
            names = [k for k, d in diffs.items() if k in stats.HEADLINE and d["verdict"] == word]
            parts.append(f"{word} on {len(names)} ({', '.join(names) or '-'})")
        out.append(f"{a} vs {b}: " + ", ".join(parts))
    return out


def plot(
    table: dict[str, dict[str, float]], out: Path, intervals: dict[str, dict[str, list[float]]] | None = None
) -> Path:
    """Grouped bars: one panel per headline metric, one bar per model, 95% intervals as error bars."""
    import matplotlib  # only when a plot is drawn: matplotlib is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    intervals = intervals or {}
    metrics = [
        m for m in list(stats.DIRECTIONS) + ["rm_win_rate"] if any(v.get(m) is not None for v in table.values())
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        names = [k for k in table if table[k].get(metric) is not None]
        values = [table[k][metric] for k in names]
        bounds = [intervals.get(k, {}).get(metric) for k in names]
        err = [
            [v - b[0] if b else 0.0 for v, b in zip(values, bounds)],
            [b[1] - v if b else 0.0 for v, b in zip(values, bounds)],
        ]
        ax.bar(range(len(names)), values, yerr=err, capsize=3, color=[f"C{list(table).index(k)}" for k in names])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        arrow = "↑" if stats.DIRECTIONS.get(metric, 1) > 0 else "↓"
        ax.set_title(f"{metric} {arrow}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle("95% intervals (bootstrap over eval items; across seeds where several)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
