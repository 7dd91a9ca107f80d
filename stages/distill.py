"""Stage `distill`: a student model learns from a teacher, on the SFT stage's prompts.

Two modes (`distill.mode`):
- sequence (Kim & Rush 2016): the teacher writes a greedy answer to every SFT training prompt
  (and the Self-Instruct prompts, when enabled); the answers are kept with their provenance
  (teacher, prompt id), filtered like any SFT data (empty answers, duplicates, overlap with an
  eval set) and the student is trained on them with the SFT stage's machinery and settings;
- logits: the student matches the teacher's next-token distributions under a generalised JSD:
  TRL's DistillationTrainer (on-policy: the student writes the answers, `distill.lmbda` 1) or
  GKDTrainer (`lmbda` < 1: the rest of the batches use the dataset's answers), starting from the
  student's SFT model (`distill.start: sft`) or its base.

`check_pair` runs before any weights load: a teacher or student that cannot be found, tokenizers
that differ in logits mode, a missing chat template. A student larger than its teacher is a
warning. The teacher is logged as a model input of the run, the teacher's answers as a dataset
with its digest, the student as the run's output model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from datasets import Dataset

from alignpipe import data, tracking, training
from alignpipe.core import trl_api
from alignpipe.core.config import DataSource, PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.data import templates
from alignpipe.evaluation import scoring
from alignpipe.training import models


def run_distill(
    cfg: PipelineConfig,
    teacher: str,
    student: str,
    student_sft: str | None = None,
    template: str | None = None,
    generated: str | None = None,
) -> StageResult:
    """Distil `teacher` into `student` (its base model; `student_sft`: the same student after SFT,
    where logits mode starts from it) on the SFT data, plus the Self-Instruct rows `generated`."""
    d = cfg.distill
    template = template or cfg.sft.template
    sizes = check_pair(cfg, teacher, student, template)
    start = student_sft if d.mode == "logits" and d.start == "sft" and student_sft else student
    use_generated = generated and d.self_instruct and Path(generated).stat().st_size
    extra = [DataSource(path=generated, format="alpaca", category="self_instruct")] if use_generated else []
    rows = data.training_rows(cfg, "sft", extra)
    section = {"distill": dataclasses.asdict(d), "teacher_model": teacher, "student_model": start}
    with tracking.open_stage(cfg, "distill", section, data_report=(rows.report, "train")) as stage:
        tracking.log_model_input(teacher, "teacher")
        tracking.log_model_input(start, "student")
        tracking.log_params({"mode": d.mode, "trainer": trl_api.config_class_name(d.trl_kind), **sizes})
        answers = None
        if d.mode == "sequence":
            train, answers = teacher_answers(cfg, teacher, rows.train, template, stage.out)
            trl = cfg.student_sft_args
            metrics, model_dir = training.train_sft(
                cfg, "distill", stage.out, start, train, rows.validation, template, trl, d.lora
            )
        else:
            metrics, model_dir = _match_distributions(cfg, teacher, start, rows.train, template, stage.out)
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            data_path=str(answers) if answers else None,
            template=template,
            lineage={"teacher_model": teacher, "student_model": start},
            details={"mode": d.mode, "data_digest": rows.digest, **sizes},
        )


def check_pair(cfg: PipelineConfig, teacher: str, student: str, template: str) -> dict[str, Any]:
    """What a distillation of `teacher` into `student` would fail on, from their configs and
    tokenizers alone (no weights are read): raises ModelSourceError naming the model and the fix.
    Returns both sizes and their ratio; warns when the student is the larger."""
    sizes, toks = {}, {}
    for role, source in (("teacher", teacher), ("student", student)):
        try:
            sizes[role] = models.count_parameters(source, cfg.model)
            toks[role] = models.load_tokenizer(source, cfg.model)
        except models.ModelSourceError as e:
            raise models.ModelSourceError(f"distill.{role}: {e}") from None
        if template == "chat" and not toks[role].chat_template:
            raise models.ModelSourceError(
                f"distill.{role}: {source} has no chat template but sft.template is chat; "
                "set sft.template=alpaca, or use a model with a chat template"
            )
    if cfg.distill.mode == "logits" and not same_tokenizer(toks["teacher"], toks["student"]):
        raise models.ModelSourceError(
            f"distill.mode=logits compares token distributions, but the teacher {teacher} "
            f"({len(toks['teacher'])} tokens) and the student {student} ({len(toks['student'])} tokens) "
            "have different tokenizers: set distill.mode=sequence (the teacher's answers as text), "
            "or pick a student that shares the teacher's tokenizer"
        )
    if sizes["student"] > sizes["teacher"]:
        print(
            f"distill: warning: the student ({sizes['student']:,} parameters) is larger than its teacher "
            f"({sizes['teacher']:,}); distillation usually goes from a larger model to a smaller one"
        )
    return {
        "teacher_parameters": sizes["teacher"],
        "student_parameters": sizes["student"],
        "parameter_ratio": round(sizes["student"] / sizes["teacher"], 4),
    }


def same_tokenizer(a, b) -> bool:
    """One vocabulary (the same ids for the same tokens) and the same end-of-sequence token."""
    return a.get_vocab() == b.get_vocab() and a.eos_token == b.eos_token


def teacher_answers(
    cfg: PipelineConfig, teacher: str, rows: list[dict], template: str, out: Path
) -> tuple[list[dict], Path]:
    """The training rows with the teacher's greedy answers as outputs, cleaned like SFT data.

    All answers, with provenance (teacher, prompt_id), are written to `teacher_answers.jsonl` in
    the stage's folder (a resumed job reuses them) and logged as the run's `teacher_answers`
    dataset; the cleaning report as `teacher_answers_report.json`."""
    path = out / "teacher_answers.jsonl"
    if not path.is_file():
        model = models.load_model(teacher, cfg.model)
        model.eval()
        tok = models.load_tokenizer(teacher, cfg.model)
        prompts = [
            templates.generation_prompt(template, tok, r["instruction"], r["input"], r["history"]) for r in rows
        ]
        answers = scoring.generate(
            model, tok, prompts, cfg.distill.max_new_tokens, cfg.evaluate.batch_size, "distill teacher"
        )
        written = [
            {
                "prompt_id": data.row_key(r),
                "teacher": teacher,
                "instruction": r["instruction"],
                "input": r["input"],
                "history": r["history"],
                "category": r["category"],
                "output": answer,
            }
            for r, answer in zip(rows, answers)
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(w, ensure_ascii=False) + "\n" for w in written), encoding="utf-8")
        os.replace(tmp, path)
    written = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    hint = "; the teacher wrote no usable answer: train it longer, or check it was trained on sft.template"
    kept, report = data.clean_generated(cfg, written, str(path), hint)
    print(f"distill: the teacher answered {len(written)} prompts; {len(kept)} answers kept ({report['dropped']})")
    tracking.log_dataset(str(path), "teacher_answers", rows=len(written))
    tracking.log_artifact(path)
    tracking.log_json(report, "teacher_answers_report.json")
    tracking.log_params({"teacher_answers": len(written), "teacher_answers_kept": len(kept)})
    return kept, path


def _match_distributions(
    cfg: PipelineConfig, teacher: str, start: str, rows: list[dict], template: str, out: Path
) -> tuple[dict[str, float], Path]:
    """Train `start` towards the teacher's token distributions (TRL DistillationTrainer or GKDTrainer)."""
    d = cfg.distill
    kind = d.trl_kind
    tok = models.load_tokenizer(start, cfg.model)
    ours = training.common_args(cfg)
    if kind == "gkd":
        ours.update(lmbda=d.lmbda, max_new_tokens=d.max_new_tokens)
    else:
        ours["max_completion_length"] = d.max_new_tokens
    args = trl_api.make_config(kind, str(out / "checkpoints"), d.logits, ours=ours)
    if kind == "gkd":  # pre-tokenised under the recipe's template (GKD's collator would impose ChatML)
        dataset = _tokenized(rows, template, tok, args.max_length)
    else:  # on-policy: prompts only, the student writes the answers
        dataset = Dataset.from_list(
            [{"prompt": templates.training_prompt(template, r["instruction"], r["input"], r["history"])} for r in rows]
        )
    trainer = trl_api.trainer(
        kind,
        model=models.load_model(start, cfg.model),
        teacher_model=models.load_model(teacher, cfg.model),
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        peft_config=training.lora_config(d.lora),
        callbacks=[tracking.MetricsCallback()],
    )
    return training.fit(trainer, tok, out, "distill")


def _tokenized(rows: list[dict], template: str, tok, max_length: int | None) -> Dataset:
    """Rows as GKD's collator takes them pre-tokenised: prompt text, ids, and a completion mask."""
    out = []
    for r in rows:
        prompt = templates.generation_prompt(template, tok, r["instruction"], r["input"], r["history"])
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(r["output"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids, mask = p + c, [0] * len(p) + [1] * len(c)
        if max_length and len(ids) > max_length:  # keep the prompt, cut the answer
            ids, mask = ids[:max_length], mask[:max_length]
        out.append({"prompt": prompt, "input_ids": ids, "completion_mask": mask})
    return Dataset.from_list(out)
