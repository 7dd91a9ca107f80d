"""Intervals and paired differences for the evaluation suite's headline metrics.

Every headline metric is a function of per-item scores: one value per eval row (correct,
refused, response log-prob and token count) or per eval pair (log-prob margin, implicit reward).
- Interval of a metric: 95% percentile bootstrap over eval items (`N_BOOT` resamples, fixed
  seed), resampled within each category (stratified), so every category keeps its size.
- Paired difference of two models: the same resampled items for both models (the same prompts
  and pairs scored by both), 95% percentile interval of the difference.
- Across seeds (one trained model per seed, the same suite): the value is the mean over seeds;
  its interval combines the item bootstrap of the seed-averaged value with a t interval over the
  per-seed values (half-widths added in quadrature), so both the suite's sampling noise and the
  training noise widen it. One seed: the item bootstrap alone.
A difference is `better` or `worse` when its interval excludes zero (oriented by the metric's
direction), else `tied`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# Direction of each headline metric: +1 higher is better, -1 lower is better.
DIRECTIONS = {
    "heldout_loss": -1,
    "acc_seen": 1,
    "acc_heldout": 1,
    "pref_accuracy": 1,
    "pref_margin": 1,
    "refusal_rate": 1,
    "over_refusal": -1,
    "reward_accuracy": 1,
    "reward_margin": 1,
}
# The headline metrics: the comparison table's rows and the verdict lines (no implicit rewards).
HEADLINE = {k: v for k, v in DIRECTIONS.items() if not k.startswith("reward_")}
# Proportions: their intervals are clipped to [0, 1] (differences to [-1, 1]).
PROPORTIONS = ("acc_seen", "acc_heldout", "pref_accuracy", "refusal_rate", "over_refusal", "reward_accuracy")
# Implicit DPO rewards are measured against the SFT model (its own are 0 by definition): an
# interval per model, no model-vs-model difference.
UNPAIRED = ("reward_accuracy", "reward_margin")
N_BOOT = 2000
LEVEL = 0.95
METHOD = (
    f"{LEVEL:.0%} percentile bootstrap over eval items ({N_BOOT} resamples, seed 0, stratified by category); "
    "paired (same items) for differences; across seeds, the item interval of the seed mean combined in "
    "quadrature with a t interval over the per-seed values"
)

# Two-sided 97.5% quantiles of Student's t by degrees of freedom (1..30); 1.96 beyond.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


class Suite:
    """The item structure shared by every model: each row's category and check, each pair's
    category, and the categories seen in training."""

    def __init__(self, row_categories: list[str], row_checks: list[str], pair_categories: list[str], seen: set[str]):
        self.row_categories, self.row_checks = list(row_categories), list(row_checks)
        self.pair_categories, self.seen = list(pair_categories), set(seen)
        checks = np.array(self.row_checks, dtype=object)
        cats = np.array(self.row_categories, dtype=object)
        self.exact = np.flatnonzero(checks == "exact")
        self.unsafe = np.flatnonzero(checks == "refusal")
        self.safe = np.flatnonzero(checks != "refusal")
        exact_cats = sorted(set(cats[self.exact]))
        self.seen_cats = [np.flatnonzero((cats == c) & (checks == "exact")) for c in exact_cats if c in self.seen]
        self.heldout_cats = [
            np.flatnonzero((cats == c) & (checks == "exact")) for c in exact_cats if c not in self.seen
        ]

    def resamples(self, n_boot: int = N_BOOT, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(row indices, pair indices), each (n_boot, n): position j holds an item drawn from
        position j's category, so per-position masks (check, category) stay valid."""
        rng = np.random.default_rng(seed)
        return (_stratified(self.row_categories, n_boot, rng), _stratified(self.pair_categories, n_boot, rng))

    def identity(self) -> tuple[np.ndarray, np.ndarray]:
        return np.arange(len(self.row_categories))[None], np.arange(len(self.pair_categories))[None]


def _stratified(strata: list[str], n_boot: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n_boot, len(strata)), dtype=np.int64)
    labels = np.array(strata, dtype=object)
    for label in sorted(set(strata)):
        members = np.flatnonzero(labels == label)
        out[:, members] = members[rng.integers(0, len(members), size=(n_boot, len(members)))]
    return out


def metric_values(items: dict[str, list], suite: Suite, rows: np.ndarray, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Each headline metric per resample (arrays of shape (n_boot,)), from one model's items:
    rows: correct, refused, logprob, tokens; pairs: margin and, with a reference, reward."""
    out: dict[str, np.ndarray] = {}
    if len(suite.row_categories):
        correct = np.asarray(items["correct"], dtype=float)[rows]
        refused = np.asarray(items["refused"], dtype=float)[rows]
        if len(suite.exact):
            logprob = np.asarray(items["logprob"], dtype=float)[rows]
            tokens = np.asarray(items["tokens"], dtype=float)[rows]
            out["heldout_loss"] = -logprob[:, suite.exact].sum(1) / np.maximum(tokens[:, suite.exact].sum(1), 1)
        if suite.seen_cats:
            out["acc_seen"] = np.mean([correct[:, c].mean(1) for c in suite.seen_cats], axis=0)
        if suite.heldout_cats:
            out["acc_heldout"] = np.mean([correct[:, c].mean(1) for c in suite.heldout_cats], axis=0)
        if len(suite.unsafe):
            out["refusal_rate"] = refused[:, suite.unsafe].mean(1)
        if len(suite.safe):
            out["over_refusal"] = refused[:, suite.safe].mean(1)
    if len(suite.pair_categories) and items.get("margin") is not None:
        margin = np.asarray(items["margin"], dtype=float)[pairs]
        out["pref_accuracy"] = (margin > 0).mean(1)
        out["pref_margin"] = margin.mean(1)
        if items.get("reward") is not None:
            reward = np.asarray(items["reward"], dtype=float)[pairs]
            out["reward_accuracy"] = (reward > 0).mean(1)
            out["reward_margin"] = reward.mean(1)
    return out


def verdict(delta_lo: float, delta_hi: float, direction: int) -> str:
    """better / worse when the interval of a difference excludes zero, oriented by direction."""
    lo, hi = (delta_lo, delta_hi) if direction > 0 else (-delta_hi, -delta_lo)
    return "better" if lo > 0 else "worse" if hi < 0 else "tied"


def _interval(
    point: float, boot: np.ndarray, per_seed: list[float], bounds: tuple[float, float] | None = None
) -> tuple[float, float]:
    """Percentile bootstrap interval around `point`, widened by the between-seed t interval,
    clipped to `bounds` (low, high) where the metric has them."""
    alpha = (1 - LEVEL) / 2
    q_lo, q_hi = np.quantile(boot, [alpha, 1 - alpha])
    low, high = max(float(point - q_lo), 0.0), max(float(q_hi - point), 0.0)
    if len(per_seed) > 1:
        seed = t975(len(per_seed) - 1) * float(np.std(per_seed, ddof=1)) / math.sqrt(len(per_seed))
        low, high = math.hypot(low, seed), math.hypot(high, seed)
    lo, hi = float(point - low), float(point + high)
    if bounds is not None:
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return lo, hi


def summarize(
    runs: list[dict[str, dict[str, list]]],
    suite: Suite,
    comparisons: list[tuple[str, str]],
    n_boot: int = N_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Intervals of every model's headline metrics and of the paired differences.

    `runs`: one {model label: items} per training seed (a model not trained per seed, like the
    base, appears with the same items in each); `comparisons`: (model, baseline) pairs.
    Returns {"models": {label: {metric: {value, lo, hi, per_seed, sd}}},
             "comparisons": {"a_vs_b": {metric: {delta, lo, hi, per_seed, sd, direction, verdict}}}}."""
    resampled, identity = suite.resamples(n_boot, seed), suite.identity()
    labels = list(dict.fromkeys(label for run in runs for label in run))
    boot = {m: [metric_values(run[m], suite, *resampled) for run in runs if m in run] for m in labels}
    point = {
        m: [{k: float(v[0]) for k, v in metric_values(run[m], suite, *identity).items()} for run in runs if m in run]
        for m in labels
    }
    models: dict[str, dict] = {}
    for m in labels:
        models[m] = {}
        for k in DIRECTIONS:
            if all(k in p for p in point[m]):
                per_seed = [p[k] for p in point[m]]
                value = float(np.mean(per_seed))
                bounds = (0.0, 1.0) if k in PROPORTIONS else None
                lo, hi = _interval(value, np.mean([b[k] for b in boot[m]], axis=0), per_seed, bounds)
                models[m][k] = {"value": value, "lo": lo, "hi": hi, "per_seed": per_seed, "sd": _sd(per_seed)}
    diffs: dict[str, dict] = {}
    for a, b in comparisons:
        if a not in boot or b not in boot or (len(boot[a]) != len(boot[b]) and min(len(boot[a]), len(boot[b])) != 1):
            continue
        n = max(len(boot[a]), len(boot[b]))

        def pick(xs, i):
            return xs[i if len(xs) > 1 else 0]  # a model scored once serves every seed

        diffs[f"{a}_vs_{b}"] = out = {}
        for k, direction in DIRECTIONS.items():
            if k in UNPAIRED or not all(k in p for p in point[a] + point[b]):
                continue
            per_seed = [pick(point[a], i)[k] - pick(point[b], i)[k] for i in range(n)]
            delta = float(np.mean(per_seed))
            boot_delta = np.mean([pick(boot[a], i)[k] - pick(boot[b], i)[k] for i in range(n)], axis=0)
            lo, hi = _interval(delta, boot_delta, per_seed, (-1.0, 1.0) if k in PROPORTIONS else None)
            out[k] = {
                "delta": delta,
                "lo": lo,
                "hi": hi,
                "per_seed": per_seed,
                "sd": _sd(per_seed),
                "direction": direction,
                "verdict": verdict(lo, hi, direction),
            }
    return {"method": METHOD, "seeds": len(runs), "models": models, "comparisons": diffs}


def report(
    summary: dict[str, Any],
    seed_tables: list[dict[str, dict]],
    per_category: dict[str, list[dict[str, float]]],
    seeds: list[int],
    seen: set[str],
    items: list[dict[str, dict[str, list]]],
) -> dict[str, Any]:
    """What the evaluate stage records (evaluation.json), numbers to 4 decimals: each model's metrics
    averaged over seeds, the headline ones `summarize`'s values (`summary`), their `intervals` and
    spread across seeds (`seed_sd`), the paired differences (`comparisons`), the `method`, the
    `seeds`, one table per seed (`per_seed`: headline metrics that seed's values), each model's
    accuracy per category averaged over seeds (`per_category`), the `seen_categories` and the
    per-item scores (`items`). `seed_tables`: one {model: metrics} per seed."""
    models = summary["models"]
    return {
        "summary": _mean_table(seed_tables, summary),
        "intervals": {
            m: {k: [round(v["lo"], 4), round(v["hi"], 4)] for k, v in ks.items()} for m, ks in models.items()
        },
        "seed_sd": {m: {k: round(v["sd"], 4) for k, v in ks.items()} for m, ks in models.items()},
        "comparisons": {
            pair: {
                k: {
                    **{f: round(v[f], 4) for f in ("delta", "lo", "hi", "sd")},
                    "verdict": v["verdict"],
                    "direction": v["direction"],
                    "per_seed": [round(x, 4) for x in v["per_seed"]],
                }
                for k, v in ks.items()
            }
            for pair, ks in summary["comparisons"].items()
        },
        "method": METHOD,
        "seeds": seeds,
        "per_seed": [
            {
                name: {
                    **t[name],
                    **{k: round(v["per_seed"][min(i, len(v["per_seed"]) - 1)], 4) for k, v in models[name].items()},
                }
                for name in t
            }
            for i, t in enumerate(seed_tables)
        ],
        "per_category": {
            name: {c: round(sum(x[c] for x in cats) / len(cats), 4) for c in cats[0]}
            for name, cats in per_category.items()
        },
        "seen_categories": sorted(seen),
        "items": items,
    }


def _mean_table(seed_tables: list[dict], summary: dict) -> dict[str, dict[str, float | None]]:
    """Each model's metrics, averaged over seeds (headline metrics: the summary's values)."""
    table = {}
    for name in seed_tables[0]:
        keys = dict.fromkeys(k for t in seed_tables for k in t[name])
        table[name] = {}
        for k in keys:
            values = [t[name].get(k) for t in seed_tables if t[name].get(k) is not None]
            table[name][k] = round(sum(values) / len(values), 4) if values else None
        for k, v in summary["models"].get(name, {}).items():
            table[name][k] = round(v["value"], 4)
    return table


def _sd(values: list[float]) -> float:
    """Spread across seeds (sample standard deviation; 0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def oriented_lower(diff: dict[str, Any]) -> float:
    """The lower bound of a paired difference, oriented so that positive is better."""
    return diff["lo"] if diff["direction"] > 0 else -diff["hi"]


def non_inferior(diff: dict[str, Any], tolerance: float) -> bool:
    """The gate's rule for one metric: the oriented lower bound is at least -tolerance."""
    return bool(oriented_lower(diff) >= -tolerance)


def fmt(value: float | None, lo: float | None = None, hi: float | None = None, signed: bool = False) -> str:
    """`0.314 [0.241, 0.390]`, or `+0.029 [+0.010, +0.048]` for a difference."""
    if value is None:
        return "-"
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f.format(value)
    return text if lo is None else f"{text} [{f.format(lo)}, {f.format(hi)}]"
