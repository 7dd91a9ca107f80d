"""Stage `evaluate`: one frozen suite, run the same way on the base, SFT-only and preference models,
and with distillation on the teacher and the student SFT-only and distilled (one model per
training seed where `seeds` lists several).

Per model, on data never trained on:
- heldout_loss: response-only NLL of the reference answers;
- task accuracy graded by program (alignpipe.evaluation.graders), per category, and averaged over the
  categories seen in SFT training (`acc_seen`) and those held out of it entirely (`acc_heldout`);
- pref_accuracy / pref_margin: how often, and by how much, the model's log-likelihood prefers
  the chosen answer of a held-out pair; with the SFT model as reference (for the distilled
  student, its SFT-only twin), the DPO implicit
  reward accuracy and margin (`reward_accuracy`, `reward_margin`, beta = evaluate.beta);
- refusal_rate on unsafe prompts and over_refusal on safe ones;
- loss_seen / loss_heldout: response NLL on rows of categories seen in training vs held out;
- format robustness: accuracy on the same prompts under templates never used in training
  (`format_robust_acc`, and `format_gap` = accuracy in the training template minus it);
- with a reward model (from the `reward` stage): rm_score, its mean score of the model's
  greedy answers to the held-out prompts, and rm_win_rate, how often it scores the model's
  answer above the SFT model's answer to the same prompt (ties count half; SFT itself: 0.5);
- sample generations, logged as an MLflow table.

Every headline metric gets a 95% interval, and every model a paired difference (with its
interval and a better/tied/worse verdict) against each model before it: alignpipe.evaluation.stats. Both
go to evaluation.json and to MLflow (`dpo/acc_seen_lo`, `dpo_vs_sft/acc_seen_delta`, ...), with
the per-item scores they came from.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from alignpipe import data, tracking
from alignpipe.core.config import PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.data import templates
from alignpipe.evaluation import graders, scoring, stats
from alignpipe.training.models import load_model, load_scorer, load_tokenizer


def run_evaluate(
    cfg: PipelineConfig,
    models: dict[str, str | list[str]],
    template: str | None = None,
    reward: str | list[str] | None = None,
) -> StageResult:
    """Score each named model (e.g. {"base": ..., "sft": ..., "dpo": ...}) on the frozen suite;
    a list of paths is one model per training seed (`cfg.training_seeds`), scored each.

    Every headline metric gets a 95% interval and every later model a paired difference against
    each earlier one (alignpipe.evaluation.stats); with a reward model, also its scores and win rates
    against the SFT model's answers."""
    model_paths, reward_model = models, reward
    template = template or cfg.sft.template
    rows = data.eval_rows(cfg, "eval")
    pairs = data.eval_rows(cfg, "eval_preference")
    seen = data.seen_categories(cfg)
    per_seed = {name: path if isinstance(path, list) else [path] for name, path in model_paths.items()}
    n_seeds = max(len(p) for p in per_seed.values())
    seeds = cfg.training_seeds if len(cfg.training_seeds) == n_seeds else list(range(n_seeds))
    judges = reward_model if isinstance(reward_model, list) else [reward_model] * n_seeds
    section = {
        "evaluate": dataclasses.asdict(cfg.evaluate),
        "models": model_paths,
        "template": template,
        "reward_model": reward_model,
        "seeds": seeds,
    }
    with tracking.open_stage(cfg, "evaluate", section) as stage:
        _log_inputs(cfg, rows, pairs, per_seed, seeds)
        runs, seed_tables, per_category, samples = _score_seeds(
            cfg, template, rows, pairs, seen, per_seed, judges, n_seeds
        )
        if reward_model:
            for judge in dict.fromkeys(judges):
                tracking.tag_upstream(cfg, "reward", judge)
                tracking.log_model_input(judge, "judge")
        suite = stats.Suite(
            [r["category"] for r in rows], [r["check"] for r in rows], [p["category"] for p in pairs], seen
        )
        labels = list(per_seed)
        summary = stats.summarize(runs, suite, [(a, b) for j, a in enumerate(labels) for b in labels[:j]])
        report = stats.report(summary, seed_tables, per_category, seeds, seen, runs)
        tracking.log_evaluation(cfg, report, model_paths, samples)
        details = {k: report[k] for k in ("seeds", "intervals", "comparisons", "per_category")}
        return stage.finish(report["summary"], template=template, details={"models": model_paths, **details})


def _log_inputs(cfg, rows, pairs, per_seed, seeds) -> None:
    """The suite's digest and size, its data files and every model scored, on the evaluate run."""
    tracking.log_params(
        {
            "eval_digest": data.rows_digest(rows),
            "eval_rows": len(rows),
            "eval_pairs": len(pairs),
            "n_seeds": len(seeds),  # as many as the longest list of models
            **{f"n_seeds.{name}": len(p) for name, p in per_seed.items()},
        }
    )
    for name, context in (("eval", "eval"), ("eval_preference", "eval_preference")):
        for path in dict.fromkeys(s.path for s in data.sources(getattr(cfg.data, name))):  # a file listed twice: once
            tracking.log_dataset(path, context)
    for name, paths in per_seed.items():
        for i, path in enumerate(paths):
            tracking.log_model_input(path, f"scored.{name}" + (f".seed{seeds[i]}" if len(paths) > 1 else ""))


def _score_seeds(cfg, template, rows, pairs, seen, per_seed, judges, n_seeds):
    """Every model of every training seed on the suite: (per-item scores per seed, metrics tables per
    seed, per-category accuracy per model and seed, the first seed's sample generations)."""
    runs, seed_tables, per_category, samples = [], [], {}, []
    for i in range(n_seeds):
        paths = {name: p[i] if len(p) > 1 else p[0] for name, p in per_seed.items()}
        seed = f" (seed {i + 1} of {n_seeds})" if n_seeds > 1 else ""
        # Implicit rewards are measured against the SFT model a model was trained from: the
        # distilled student's against its own SFT-only twin, every other model's against `sft`.
        refs = {
            r: _pair_logprobs(paths[r], cfg, template, pairs, f"evaluate {r}{seed}")
            for r in _REFERENCES
            if r in paths and pairs
        }
        table, items, generations, scored = {}, {}, {}, {}
        for name, path in paths.items():
            if i and len(per_seed[name]) == 1:  # a model not trained per seed (the base) is scored once
                table[name], items[name] = seed_tables[0][name], runs[0][name]
                continue
            if path in scored:  # one model under two labels (the teacher is the SFT model): scored once
                same = scored[path]
                table[name], items[name] = dict(table[same]), items[same]
                generations[name] = generations[same]
                per_category[name] = per_category[same]
                continue
            scored[path] = name
            metrics, cats, rows_out, items[name] = _score_model(
                name, path, cfg, template, rows, pairs, seen, refs.get(_reference_of(name)), generations, seed
            )
            table[name] = metrics
            per_category.setdefault(name, []).append(cats)
            if i == 0:
                samples.extend(rows_out)
        if judges[i]:
            _add_reward_model_scores(table, generations, judges[i], cfg, template, rows, seed)
        runs.append(items)
        seed_tables.append(table)
    return runs, seed_tables, per_category, samples


_REFERENCES = ("sft", "student_sft")


def _reference_of(name: str) -> str:
    return "student_sft" if name.startswith("student_") else "sft"


def _score_model(name, path, cfg, template, rows, pairs, seen, reference, generations=None, seed=""):
    """(metrics, per-category accuracy, sample rows, per-item scores) of one model; `seed` ends its
    progress label (` (seed 2 of 3)`)."""
    label = f"evaluate {name}{seed}"
    model = load_model(path, cfg.model)
    model.eval()
    tok = load_tokenizer(path, cfg.model)
    ev = cfg.evaluate
    prompts = [
        templates.generation_prompt(template, tok, r["instruction"], r["input"], r.get("history")) for r in rows
    ]
    outputs = scoring.generate(model, tok, prompts, ev.max_new_tokens, ev.batch_size, label)
    if generations is not None:
        generations[name] = outputs
    correct = [graders.check(r, o) for r, o in zip(rows, outputs)]
    refused = [graders.is_refusal(o) for o in outputs]

    task = [i for i, r in enumerate(rows) if r["check"] == "exact"]
    scores = scoring.response_logprobs(
        model, tok, [prompts[i] for i in task], [rows[i]["output"] for i in task], ev.batch_size, label
    )
    by_seen = {k: [s for i, s in zip(task, scores) if (rows[i]["category"] in seen) == k] for k in (True, False)}
    logprob, tokens = [0.0] * len(rows), [0] * len(rows)
    for i, (s, n) in zip(task, scores):
        logprob[i], tokens[i] = s, n
    items = {
        "correct": [int(bool(c)) for c in correct],
        "refused": [int(bool(r)) for r in refused],
        "logprob": logprob,
        "tokens": tokens,
        "margin": None,
        "reward": None,
    }

    by_cat: dict[str, list[bool]] = defaultdict(list)
    for i in task:
        by_cat[rows[i]["category"]].append(correct[i])
    cat_acc = {c: sum(v) / len(v) for c, v in sorted(by_cat.items())}
    metrics = {
        "loss_seen": round(scoring.perplexity(by_seen[True])[0], 4) if by_seen[True] else None,
        "loss_heldout": round(scoring.perplexity(by_seen[False])[0], 4) if by_seen[False] else None,
    }
    metrics.update(_format_robustness(model, tok, template, rows, correct, cfg, label))
    if pairs:
        is_reference = name == _reference_of(name) and reference is not None  # already scored as the reference
        chosen, rejected = reference if is_reference else _pair_logprobs(path, cfg, template, pairs, label, model, tok)
        items["margin"] = [c - r for c, r in zip(chosen, rejected)]
        if reference is not None:
            rc, rr = reference
            items["reward"] = [ev.beta * ((c - c0) - (r - r0)) for c, r, c0, r0 in zip(chosen, rejected, rc, rr)]
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
    return metrics, {c: round(a, 4) for c, a in cat_acc.items()}, samples, items


def _format_robustness(model, tok, template, rows, correct, cfg, label: str) -> dict:
    """Accuracy on up to formats.robustness_rows exact-check prompts under each unseen template."""
    task = [i for i, r in enumerate(rows) if r["check"] == "exact"]
    picked = [task[j] for j in _spread([rows[i] for i in task], cfg.formats.robustness_rows)]
    if not picked:
        return {}
    out = {}
    for name in templates.UNSEEN:
        prompts = [
            templates.unseen_prompt(
                name, template, tok, rows[i]["instruction"], rows[i]["input"], rows[i].get("history")
            )
            for i in picked
        ]
        ev = cfg.evaluate
        outputs = scoring.generate(model, tok, prompts, ev.max_new_tokens, ev.batch_size, f"{label}, {name} format")
        out[f"format_acc_{name}"] = _mean(graders.check(rows[i], o) for i, o in zip(picked, outputs))
    robust = _mean(out.values())
    out["format_robust_acc"] = robust
    out["format_gap"] = round(_mean(correct[i] for i in picked) - robust, 4)
    return out


def _add_reward_model_scores(table, generations, reward_model, cfg, template, rows, seed: str) -> None:
    """rm_score per model and, against the SFT model's answers, rm_win_rate (ties count half)."""
    scorer = load_scorer(reward_model, cfg.model)
    scorer.eval()
    tok = load_tokenizer(reward_model, cfg.model)
    prompts = [templates.generation_prompt(template, tok, r["instruction"], r["input"]) for r in rows]
    scores = {
        name: scoring.reward_scores(scorer, tok, prompts, outputs, cfg.evaluate.batch_size, f"evaluate {name}{seed}")
        for name, outputs in generations.items()
    }
    for name, s in scores.items():
        table[name]["rm_score"] = round(sum(s) / len(s), 4)
        if "sft" in scores:
            table[name]["rm_win_rate"] = _mean(
                [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(s, scores["sft"])]
            )


def _pair_logprobs(path, cfg, template, pairs, label: str, model=None, tok=None):
    """Summed log-probs of the chosen and the rejected answer of each pair."""
    if model is None:
        model = load_model(path, cfg.model)
        model.eval()
        tok = load_tokenizer(path, cfg.model)
    prompts = [
        templates.generation_prompt(template, tok, p["instruction"], p["input"], p.get("history")) for p in pairs
    ]
    bs = cfg.evaluate.batch_size
    chosen, rejected = (
        [s for s, _ in scoring.response_logprobs(model, tok, prompts, [p[k] for p in pairs], bs, f"{label}, {k}")]
        for k in ("chosen", "rejected")
    )
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
