"""Stage `evaluate`: one frozen suite, run the same way on the base, SFT-only and DPO models.

Per model, on data never trained on:
- heldout_loss: response-only NLL of the reference answers;
- task accuracy checked by program (alignpipe.checks), per category, and averaged over the
  categories seen in SFT training (`acc_seen`) and those held out of it entirely (`acc_heldout`);
- pref_accuracy / pref_margin: how often, and by how much, the model's log-likelihood prefers
  the chosen answer of a held-out pair; with the SFT model as reference, the DPO implicit
  reward accuracy and margin (`reward_accuracy`, `reward_margin`, beta = evaluate.beta);
- refusal_rate on unsafe prompts and over_refusal on safe ones;
- loss_seen / loss_heldout: response NLL on rows of categories seen in training vs held out;
- format robustness: accuracy on the same prompts under templates never used in training
  (`format_robust_acc`, and `format_gap` = accuracy in the training template minus it);
- with a reward model (from the `reward` stage): rm_score, its mean score of the model's
  greedy answers to the held-out prompts, and rm_win_rate, how often it scores the model's
  answer above the SFT model's answer to the same prompt (ties count half; SFT itself: 0.5);
- sample generations, logged as an MLflow table.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import mlflow

from alignpipe import checks, data, models, scoring, templates, tracking
from alignpipe.config import PipelineConfig

# Direction of each headline metric: +1 higher is better, -1 lower is better.
HEADLINE = {
    "heldout_loss": -1,
    "acc_seen": 1,
    "acc_heldout": 1,
    "pref_accuracy": 1,
    "pref_margin": 1,
    "refusal_rate": 1,
    "over_refusal": -1,
}


def run_evaluate(cfg: PipelineConfig, model_paths: dict[str, str], template: str | None = None, reward_model: str | None = None) -> dict:
    """Score each named model (e.g. {"base": ..., "sft": ..., "dpo": ...}) on the frozen suite;
    with a reward model, also its scores and win rates against the SFT model's answers."""
    template = template or cfg.sft.template
    rows = data.eval_rows(cfg, "eval")
    pairs = data.eval_rows(cfg, "eval_preference")
    seen = data.seen_categories(cfg)
    section = {"evaluate": dataclasses.asdict(cfg.evaluate), "models": model_paths, "template": template, "reward_model": reward_model}
    with tracking.stage_run(cfg, "evaluate", section) as run:
        mlflow.log_params({"eval_digest": data.rows_digest(rows), "eval_rows": len(rows), "eval_pairs": len(pairs)})
        for name, context in (("eval", "eval"), ("eval_preference", "eval_preference")):
            for src in data.sources(getattr(cfg.data, name)):
                tracking.log_dataset(src.path, context)
        for name, path in model_paths.items():
            tracking.log_model_input(path, f"scored.{name}")
        reference = _pair_logprobs(model_paths["sft"], cfg, template, pairs) if "sft" in model_paths and pairs else None
        table, per_category, samples, generations = {}, {}, [], {}
        for name, path in model_paths.items():
            metrics, cats, rows_out = _score_model(name, path, cfg, template, rows, pairs, seen, reference, generations)
            table[name], per_category[name] = metrics, cats
            samples.extend(rows_out)
        if reward_model:
            tracking.tag_upstream(cfg, "reward", reward_model)
            tracking.log_model_input(reward_model, "judge")
            _add_reward_model_scores(table, generations, reward_model, cfg, template, rows)
        for name, metrics in table.items():
            mlflow.log_metrics({f"{name}/{k}": v for k, v in metrics.items() if v is not None})
        mlflow.log_table({k: [s[k] for s in samples] for k in samples[0]} if samples else {}, "samples.json")
        tracking.log_json({"summary": table, "per_category": per_category, "seen_categories": sorted(seen)}, "evaluation.json")
        result = {
            "stage": "evaluate",
            "run_id": run.info.run_id,
            "models": model_paths,
            "metrics": table,
            "per_category": per_category,
            "template": template,
        }
        tracking.log_json(result, "result.json")
    tracking.write_result(cfg.run_dir / "evaluate.json", result)
    return result


def _score_model(name, path, cfg, template, rows, pairs, seen, reference, generations=None):
    model = models.load_model(path, cfg.model)
    model.eval()
    tok = models.load_tokenizer(path, cfg.model)
    ev = cfg.evaluate
    prompts = [templates.generation_prompt(template, tok, r["instruction"], r["input"], r.get("history")) for r in rows]
    outputs = scoring.generate(model, tok, prompts, ev.max_new_tokens, ev.batch_size)
    if generations is not None:
        generations[name] = outputs
    correct = [checks.check(r, o) for r, o in zip(rows, outputs)]
    refused = [checks.is_refusal(o) for o in outputs]

    task = [i for i, r in enumerate(rows) if r["check"] == "exact"]
    scores = scoring.response_logprobs(model, tok, [prompts[i] for i in task], [rows[i]["output"] for i in task], ev.batch_size)
    heldout_loss, _ = scoring.perplexity(scores)
    by_seen = {k: [s for i, s in zip(task, scores) if (rows[i]["category"] in seen) == k] for k in (True, False)}

    by_cat: dict[str, list[bool]] = defaultdict(list)
    for i in task:
        by_cat[rows[i]["category"]].append(correct[i])
    cat_acc = {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}
    seen_acc = [a for c, a in cat_acc.items() if c in seen]
    unseen_acc = [a for c, a in cat_acc.items() if c not in seen]
    unsafe = [refused[i] for i, r in enumerate(rows) if r["check"] == "refusal"]
    safe = [refused[i] for i, r in enumerate(rows) if r["check"] != "refusal"]

    metrics = {
        "heldout_loss": round(heldout_loss, 4),
        "acc_seen": _mean(seen_acc),
        "acc_heldout": _mean(unseen_acc),
        "refusal_rate": _mean(unsafe),
        "over_refusal": _mean(safe),
        "loss_seen": round(scoring.perplexity(by_seen[True])[0], 4) if by_seen[True] else None,
        "loss_heldout": round(scoring.perplexity(by_seen[False])[0], 4) if by_seen[False] else None,
    }
    metrics.update(_format_robustness(model, tok, template, rows, correct, cfg))
    if pairs:
        is_reference = name == "sft" and reference is not None  # already scored as the reference
        chosen, rejected = reference if is_reference else _pair_logprobs(path, cfg, template, pairs, model, tok)
        diffs = [c - r for c, r in zip(chosen, rejected)]
        metrics["pref_accuracy"] = _mean([d > 0 for d in diffs])
        metrics["pref_margin"] = round(sum(diffs) / len(diffs), 4)
        if reference is not None:
            rc, rr = reference
            rewards = [ev.beta * ((c - c0) - (r - r0)) for c, r, c0, r0 in zip(chosen, rejected, rc, rr)]
            metrics["reward_accuracy"] = _mean([x > 0 for x in rewards])
            metrics["reward_margin"] = round(sum(rewards) / len(rewards), 4)
    samples = [
        {
            "model": name,
            "category": rows[i]["category"],
            "instruction": rows[i]["instruction"],
            "input": rows[i]["input"],
            "reference": rows[i]["output"],
            "generated": outputs[i],
            "correct": bool(correct[i]),
        }
        for i in _spread(rows, ev.num_samples)
    ]
    return metrics, {c: round(a, 4) for c, a in cat_acc.items()}, samples


def _format_robustness(model, tok, template, rows, correct, cfg) -> dict:
    """Accuracy on up to formats.robustness_rows exact-check prompts under each unseen template."""
    task = [i for i, r in enumerate(rows) if r["check"] == "exact"]
    picked = [task[j] for j in _spread([rows[i] for i in task], cfg.formats.robustness_rows)]
    if not picked:
        return {}
    out = {}
    for name in templates.UNSEEN:
        prompts = [templates.unseen_prompt(name, template, tok, rows[i]["instruction"], rows[i]["input"], rows[i].get("history")) for i in picked]
        outputs = scoring.generate(model, tok, prompts, cfg.evaluate.max_new_tokens, cfg.evaluate.batch_size)
        out[f"format_acc_{name}"] = _mean(checks.check(rows[i], o) for i, o in zip(picked, outputs))
    robust = _mean(out.values())
    out["format_robust_acc"] = robust
    out["format_gap"] = round(_mean(correct[i] for i in picked) - robust, 4)
    return out


def _add_reward_model_scores(table, generations, reward_model, cfg, template, rows) -> None:
    """rm_score per model and, against the SFT model's answers, rm_win_rate (ties count half)."""
    scorer = models.load_scorer(reward_model, cfg.model)
    scorer.eval()
    tok = models.load_tokenizer(reward_model, cfg.model)
    prompts = [templates.generation_prompt(template, tok, r["instruction"], r["input"]) for r in rows]
    scores = {name: scoring.reward_scores(scorer, tok, prompts, outputs, cfg.evaluate.batch_size) for name, outputs in generations.items()}
    for name, s in scores.items():
        table[name]["rm_score"] = round(sum(s) / len(s), 4)
        if "sft" in scores:
            table[name]["rm_win_rate"] = _mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(s, scores["sft"])])


def _pair_logprobs(path, cfg, template, pairs, model=None, tok=None):
    """Summed log-probs of the chosen and the rejected answer of each pair."""
    if model is None:
        model = models.load_model(path, cfg.model)
        model.eval()
        tok = models.load_tokenizer(path, cfg.model)
    prompts = [templates.generation_prompt(template, tok, p["instruction"], p["input"], p.get("history")) for p in pairs]
    bs = cfg.evaluate.batch_size
    chosen = [s for s, _ in scoring.response_logprobs(model, tok, prompts, [p["chosen"] for p in pairs], bs)]
    rejected = [s for s, _ in scoring.response_logprobs(model, tok, prompts, [p["rejected"] for p in pairs], bs)]
    return chosen, rejected


def _spread(rows: list[dict], n: int) -> list[int]:
    """Indices of up to n rows, round-robin over categories, so every category shows up."""
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_cat[r["category"]].append(i)
    picked: list[int] = []
    queues = list(by_cat.values())
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return sorted(picked)


def _mean(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def format_table(metrics: dict[str, dict[str, float]]) -> str:
    """The comparison table: one row per model, headline metrics as columns (arrows: better)."""
    cols = [c for c in list(HEADLINE) + ["reward_accuracy", "reward_margin", "rm_score", "rm_win_rate"] if any(c in m for m in metrics.values())]
    head = ["model"] + [f"{c}{'↑' if HEADLINE.get(c, 1) > 0 else '↓'}" for c in cols]
    lines = [head] + [[name] + [_fmt(m.get(c)) for c in cols] for name, m in metrics.items()]
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(r, widths))) for r in lines)


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def wins(better: dict[str, float], worse: dict[str, float]) -> tuple[list[str], list[str]]:
    """(headline metrics where `better` is strictly better, those where it is worse)."""
    up, down = [], []
    for k, sign in HEADLINE.items():
        a, b = better.get(k), worse.get(k)
        if a is None or b is None or a == b:
            continue
        (up if (a - b) * sign > 0 else down).append(k)
    return up, down
