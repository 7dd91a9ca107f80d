"""The statistics behind every verdict, on constructed inputs: a planted difference is found, a null
one is called significant at about the nominal rate, intervals cover, and the gate decides by them."""

import json

import numpy as np
import pytest

from alignpipe.core.config import PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.evaluation import promote, stats

pytestmark = pytest.mark.fast


def _suite(n_rows=200, n_pairs=200, categories=("a", "b"), seen=("a",)):
    rows = [categories[i % len(categories)] for i in range(n_rows)]
    return stats.Suite(rows, ["exact"] * n_rows, [categories[i % len(categories)] for i in range(n_pairs)], set(seen))


def _items(rng, p_correct, n_rows=200, n_pairs=200, margin_mean=0.0):
    return {
        "correct": (rng.random(n_rows) < p_correct).astype(int).tolist(),
        "refused": [0] * n_rows,
        "logprob": (-rng.random(n_rows) * 5).tolist(),
        "tokens": [5] * n_rows,
        "margin": (rng.normal(margin_mean, 1.0, n_pairs)).tolist(),
        "reward": None,
    }


def test_point_values_are_the_plain_metrics():
    rng = np.random.default_rng(1)
    suite = _suite(categories=("a", "b", "c"), seen=("a", "b"))
    items = _items(rng, 0.5)
    values = {k: float(v[0]) for k, v in stats.metric_values(items, suite, *suite.identity()).items()}
    correct = np.array(items["correct"])
    cats = np.array(suite.row_categories)
    assert values["acc_seen"] == pytest.approx(np.mean([correct[cats == c].mean() for c in ("a", "b")]))
    assert values["acc_heldout"] == pytest.approx(correct[cats == "c"].mean())
    assert values["heldout_loss"] == pytest.approx(-np.sum(items["logprob"]) / (5 * 200))
    assert values["pref_accuracy"] == pytest.approx(np.mean(np.array(items["margin"]) > 0))
    assert values["over_refusal"] == 0.0 and "refusal_rate" not in values


def test_stratified_resampling_keeps_each_position_in_its_category():
    suite = _suite(n_rows=30, categories=("a", "b", "c"))
    rows, _ = suite.resamples(200, seed=0)
    cats = np.array(suite.row_categories)
    assert (cats[rows] == cats[None, :]).all()


def test_a_planted_difference_is_detected_and_the_gate_passes_it():
    rng = np.random.default_rng(2)
    suite = _suite(n_rows=400, n_pairs=400)
    better, worse = _items(rng, 0.8, 400, 400, margin_mean=1.0), _items(rng, 0.5, 400, 400, margin_mean=0.0)
    out = stats.summarize([{"old": worse, "new": better}], suite, [("new", "old")], n_boot=500)
    d = out["comparisons"]["new_vs_old"]
    assert d["acc_seen"]["verdict"] == "better" and d["pref_margin"]["verdict"] == "better"
    assert d["acc_seen"]["lo"] > 0.15 and d["acc_seen"]["hi"] < 0.45
    assert d["heldout_loss"]["verdict"] == "tied"  # same distribution of log-probs: no claim


def test_a_null_difference_is_called_at_about_the_nominal_rate():
    """Two models with the same accuracy: the paired interval excludes 0 in about 5% of suites."""
    rng = np.random.default_rng(3)
    suite = _suite(n_rows=150, n_pairs=10)
    calls = 0
    trials = 120
    for i in range(trials):
        a, b = _items(rng, 0.6, 150, 10), _items(rng, 0.6, 150, 10)
        out = stats.summarize([{"a": a, "b": b}], suite, [("b", "a")], n_boot=400, seed=i)
        calls += out["comparisons"]["b_vs_a"]["acc_seen"]["verdict"] != "tied"
    assert calls / trials <= 0.12  # nominal 0.05; a binomial(120, 0.05) exceeds 14 with p < 0.001


def test_intervals_cover_the_true_value():
    """A model with true accuracy 0.7 on suites of 200 items: the 95% interval covers 0.7 in most."""
    rng = np.random.default_rng(4)
    suite = _suite(n_rows=200, n_pairs=10, categories=("a",))
    covered = 0
    trials = 100
    for i in range(trials):
        out = stats.summarize([{"m": _items(rng, 0.7, 200, 10)}], suite, [], n_boot=400, seed=i)
        m = out["models"]["m"]["acc_seen"]
        covered += m["lo"] <= 0.7 <= m["hi"]
    assert covered / trials >= 0.88


def test_seeds_widen_the_interval_by_their_spread():
    """Three seeds that disagree give a wider interval than their pooled items alone would."""
    rng = np.random.default_rng(5)
    suite = _suite(n_rows=300, n_pairs=10)
    base = _items(rng, 0.5, 300, 10)
    runs = [{"base": base, "sft": _items(rng, p, 300, 10)} for p in (0.55, 0.7, 0.85)]
    out = stats.summarize(runs, suite, [("sft", "base")], n_boot=400)
    d = out["comparisons"]["sft_vs_base"]["acc_seen"]
    assert len(d["per_seed"]) == 3 and d["delta"] == pytest.approx(np.mean(d["per_seed"]))
    one = stats.summarize(runs[1:2], suite, [("sft", "base")], n_boot=400)["comparisons"]["sft_vs_base"]["acc_seen"]
    assert (d["hi"] - d["lo"]) > 1.5 * (one["hi"] - one["lo"])
    assert (
        out["seeds"] == 3
        and out["models"]["base"]["acc_seen"]["per_seed"] == [out["models"]["base"]["acc_seen"]["value"]] * 3
    )


def test_report_averages_seeds_and_rounds_what_evaluation_json_keeps():
    """The base scored once serves both seeds; the headline metrics are summarize's, the others the seeds' mean."""
    rng = np.random.default_rng(6)
    suite = _suite(n_rows=40, n_pairs=10)
    base = _items(rng, 0.5, 40, 10)
    runs = [{"base": base, "sft": _items(rng, p, 40, 10)} for p in (0.6, 0.8)]
    summary = stats.summarize(runs, suite, [("sft", "base")], n_boot=50)
    tables = [{"base": {"rm_score": 0.1}, "sft": {"rm_score": s, "loss_seen": None}} for s in (0.2, 0.30001)]
    cats = {"base": [{"a": 0.5}], "sft": [{"a": 1 / 3}, {"a": 2 / 3}]}
    out = stats.report(summary, tables, cats, [42, 43], {"a"}, runs)
    assert list(out) == [
        "summary",
        "intervals",
        "seed_sd",
        "comparisons",
        "method",
        "seeds",
        "per_seed",
        "per_category",
        "seen_categories",
        "items",
    ]
    sft = summary["models"]["sft"]["acc_seen"]
    assert out["summary"]["sft"]["rm_score"] == 0.25 and out["summary"]["sft"]["loss_seen"] is None
    assert out["summary"]["sft"]["acc_seen"] == round(sft["value"], 4)
    assert out["intervals"]["sft"]["acc_seen"] == [round(sft["lo"], 4), round(sft["hi"], 4)]
    assert [t["sft"]["acc_seen"] for t in out["per_seed"]] == [round(v, 4) for v in sft["per_seed"]]
    assert out["per_seed"][1]["base"]["acc_seen"] == out["per_seed"][0]["base"]["acc_seen"]
    assert out["per_seed"][1]["sft"]["rm_score"] == 0.30001  # the seed's own table, as scored
    assert out["comparisons"]["sft_vs_base"]["acc_seen"]["verdict"] in ("better", "tied", "worse")
    assert out["per_category"] == {"base": {"a": 0.5}, "sft": {"a": 0.5}} and out["seen_categories"] == ["a"]
    assert out["items"] is runs and json.loads(json.dumps(out)) == out


def test_verdict_follows_the_metric_direction():
    assert stats.verdict(0.01, 0.05, +1) == "better" and stats.verdict(0.01, 0.05, -1) == "worse"
    assert stats.verdict(-0.05, -0.01, -1) == "better" and stats.verdict(-0.01, 0.02, +1) == "tied"


def _evaluation(**diffs):
    comparisons = {
        "dpo_vs_sft": {
            k: {
                "delta": (lo + hi) / 2,
                "lo": lo,
                "hi": hi,
                "direction": stats.DIRECTIONS[k],
                "verdict": stats.verdict(lo, hi, stats.DIRECTIONS[k]),
            }
            for k, (lo, hi) in diffs.items()
        }
    }
    metrics = {"sft": {k: 0.5 for k in diffs}, "dpo": {k: 0.5 for k in diffs}}
    return StageResult("evaluate", None, metrics, details={"comparisons": comparisons, "seeds": [42, 43, 44]})


@pytest.mark.parametrize(
    ("diffs", "tolerance", "passed"),
    [
        ({"pref_accuracy": (0.01, 0.05), "acc_seen": (-0.03, 0.02)}, 0.05, True),  # better + tied within the margin
        ({"pref_accuracy": (0.01, 0.05), "acc_seen": (-0.08, 0.02)}, 0.05, False),  # tied, but could be 8 points worse
        ({"pref_accuracy": (0.01, 0.05), "acc_seen": (-0.08, 0.02)}, 0.10, True),  # ... inside a 10-point margin
        ({"pref_accuracy": (-0.09, -0.06)}, 0.05, False),  # significantly worse
        ({"over_refusal": (-0.02, 0.04)}, 0.05, True),  # lower is better: +0.04 worst case
        ({"over_refusal": (-0.02, 0.07)}, 0.05, False),
    ],
)
def test_gate_decides_by_the_lower_bound_of_the_paired_difference(diffs, tolerance, passed):
    cfg = PipelineConfig(experiment="t")
    cfg.promote.metrics, cfg.promote.tolerance = list(diffs), tolerance
    result = promote.verdict(cfg, "dpo", _evaluation(**diffs))
    assert result["passed"] is passed and all(type(c["passed"]) is bool for c in result["checks"])  # JSON-native
    assert json.loads(json.dumps(result)) == result
    assert result["baseline"] == "sft" and result["seeds"] == [42, 43, 44] and "non-inferiority" in result["rule"]
    line = promote.verdict_line(result)
    assert line.startswith("passed" if passed else "failed") and "3 seeds" in line


def test_gate_fails_a_metric_that_was_not_measured():
    cfg = PipelineConfig(experiment="t")
    cfg.promote.metrics = ["pref_accuracy", "rm_win_rate"]
    result = promote.verdict(cfg, "dpo", _evaluation(pref_accuracy=(0.01, 0.05)))
    assert not result["passed"] and result["checks"][1]["why"] == "not measured"


def test_table_shows_intervals_and_marks_differences_by_them():
    from alignpipe.evaluation.compare import format_table, verdict_lines

    metrics = {"sft": {"acc_seen": 0.30, "heldout_loss": 4.0}, "dpo": {"acc_seen": 0.33, "heldout_loss": 3.9}}
    intervals = {"sft": {"acc_seen": [0.25, 0.35]}, "dpo": {"acc_seen": [0.28, 0.38]}}
    comparisons = {
        "dpo_vs_sft": {
            "acc_seen": {"delta": 0.03, "lo": 0.01, "hi": 0.05, "direction": 1, "verdict": "better"},
            "heldout_loss": {"delta": -0.1, "lo": -0.3, "hi": 0.1, "direction": -1, "verdict": "tied"},
        }
    }
    lines = format_table(metrics, intervals, comparisons).splitlines()
    assert lines[0].split() == ["metric", "sft", "dpo", "dpo", "vs", "sft"]
    assert lines[1].split()[:2] == ["heldout_loss", "↓"] and lines[1].endswith("tied")
    assert "0.330 [0.280, 0.380]" in lines[2] and lines[2].endswith("+0.030 [+0.010, +0.050] better")
    assert verdict_lines(comparisons, [("dpo", "sft")]) == [
        "dpo vs sft: better on 1 (acc_seen), tied on 1 (heldout_loss), worse on 0 (-)"
    ]
