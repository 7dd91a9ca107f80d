"""Stage `select`: score candidate pretrained models on held-out instruction data; pick one.

Each candidate (hub id, local dir or tiny spec) is checked against the parameter/memory budget,
then scored on the SFT data's held-out validation rows (never trained on): response-only
perplexity, and a short greedy generation (its first line) scored by token F1 against the
reference. Base models have not seen the SFT template, so they are scored zero-shot in a plain
format, the question lines then the answer line, as lm-eval-harness scores base models.

Rule: among the candidates within budget, the lowest perplexity wins; candidates within
`select.tie_tolerance` of the best are tied, and the higher generation F1, then the smaller
model, wins.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

import mlflow

from alignpipe import data, tracking
from alignpipe.core.config import PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.data import templates
from alignpipe.evaluation import scoring
from alignpipe.training import models

BYTES_PER_PARAM_FULL_FT = 16  # fp32 weights + gradients + Adam's two moments


def run_select(cfg: PipelineConfig) -> StageResult:
    rows = data.stage_rows(cfg, "sft")[0]
    _, heldout = data.split_validation(rows, cfg.data.validation_rows)
    heldout = heldout or rows[: cfg.data.validation_rows]
    section = {"model": dataclasses.asdict(cfg.model), "select": dataclasses.asdict(cfg.select)}
    with tracking.open_stage(cfg, "select", section) as stage:
        ranking = [_score(cand, cfg, heldout) for cand in cfg.model.candidates]
        scored = [r for r in ranking if r["within_budget"]]
        if not scored:
            smallest = min(ranking, key=lambda r: r["parameters"])
            raise models.ModelSourceError(
                f"no candidate fits the budget (model.max_params={cfg.model.max_params}, "
                f"model.max_memory_gb={cfg.model.max_memory_gb}); the smallest, {smallest['name']}, has "
                f"{smallest['parameters']:,} parameters: raise the budget or add a smaller model"
            )
        best_ppl = min(r["perplexity"] for r in scored)
        tied = [r for r in scored if r["perplexity"] <= best_ppl * (1 + cfg.select.tie_tolerance)]
        pick = max(tied, key=lambda r: (r["generation_f1"], -r["parameters"]))
        reason = (
            f"{pick['name']}: lowest held-out response perplexity ({pick['perplexity']:.2f}) among "
            f"{len(scored)} candidate(s) within budget"
            + (
                f"; tied within {cfg.select.tie_tolerance:.0%} with {len(tied) - 1} other(s), won on generation F1 "
                f"({pick['generation_f1']:.3f}) then size"
                if len(tied) > 1
                else ""
            )
        )
        for r in ranking:
            r["selected"] = r is pick
            if r["within_budget"]:
                mlflow.log_metrics(
                    {f"{r['name']}.perplexity": r["perplexity"], f"{r['name']}.generation_f1": r["generation_f1"]}
                )
        mlflow.log_table({k: [r.get(k) for r in ranking] for k in ranking[0]}, "ranking.json")
        for src in data.sources(cfg.data.sft):
            tracking.log_dataset(src.path, "validation")
        tracking.log_model_input(pick["source"], "selected")
        mlflow.set_tags(
            {
                "alignpipe.selected": pick["name"],
                "alignpipe.selected_source": pick["source"],
                "alignpipe.reason": reason[:5000],
            }
        )
        return stage.finish(
            {},
            model_path=pick["source"],
            details={
                "candidate": pick["name"],
                "reason": reason,
                "ranking": ranking,
                "data_digest": data.rows_digest(rows),
            },
        )


def _score(cand, cfg: PipelineConfig, rows: list[dict]) -> dict:
    started = time.time()
    source = models.resolve(cand, cfg)
    params = models.count_parameters(source, cfg.model)
    memory_gb = params * BYTES_PER_PARAM_FULL_FT / 1e9
    entry = {"name": cand.name, "source": source, "parameters": params, "train_memory_gb": round(memory_gb, 3)}
    over = (cfg.model.max_params and params > cfg.model.max_params) or (
        cfg.model.max_memory_gb and memory_gb > cfg.model.max_memory_gb
    )
    entry["within_budget"] = not over
    if over:
        entry.update(perplexity=None, generation_f1=None, seconds=0.0)
        return entry
    model = models.load_model(source, cfg.model)
    model.eval()
    tok = models.load_tokenizer(source, cfg.model)
    ppl_rows = rows[: cfg.select.perplexity_rows]
    prompts = [templates.plain_prompt(r["instruction"], r["input"]) for r in ppl_rows]
    label = f"select {cand.name}"
    scores = scoring.response_logprobs(model, tok, prompts, [r["output"] for r in ppl_rows], label=label)
    _, ppl = scoring.perplexity(scores)
    gen_rows = rows[: cfg.select.generation_rows]
    outputs = scoring.generate(model, tok, prompts[: len(gen_rows)], cfg.select.max_new_tokens, label=label)
    f1 = sum(token_f1(o.split("\n")[0], r["output"]) for o, r in zip(outputs, gen_rows)) / max(len(gen_rows), 1)
    entry.update(perplexity=round(ppl, 4), generation_f1=round(f1, 4), seconds=round(time.time() - started, 1))
    return entry


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token overlap F1 (whitespace tokens, lowercased)."""
    p, r = prediction.lower().split(), reference.lower().split()
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)
