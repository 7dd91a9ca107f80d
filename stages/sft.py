"""Stage `sft`: instruction tuning with TRL's SFTTrainer, loss on the response only.

Rows become TRL prompt/completion rows under the chosen template (Alpaca, or the model's chat
template), so only completion tokens carry loss. Packing and LoRA are options (`sft.packing`,
`sft.lora`); every other TRL SFTConfig field passes through from the `sft` section. A job killed
part-way resumes from its last checkpoint when run again with the same inputs.

Rows come from `data.training_rows` (mixture, bad-row policy, held-out categories, refusal
mixing, dedup, decontamination); its report is logged to the run. A Self-Instruct file
(`generated`) joins the mixture as one more source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignpipe import data, tracking, training
from alignpipe.core.config import DataSource, PipelineConfig
from alignpipe.core.result import StageResult


def run_sft(cfg: PipelineConfig, base: str, generated: str | None = None, name: str = "sft") -> StageResult:
    """Train the `base` model on the configured SFT data, plus `generated` (a Self-Instruct JSONL).

    `name` labels the run and its result: `sft`, or `student_sft` (the distillation student's
    SFT-only twin, trained on the same data with the same settings as its distilled twin: the
    student's adapters, `distill.lora`, and `distill.sequence` over the `sft` section's fields)."""
    if generated and not Path(generated).stat().st_size:
        print(f"{name}: {generated} has no generated rows; training on the configured data alone")
        generated = None
    extra = [DataSource(path=generated, format="alpaca", category="self_instruct")] if generated else []
    rows = data.training_rows(cfg, "sft", extra)
    template = cfg.sft.template
    student = name == "student_sft"  # trained as its distilled twin is: distill.lora, distill.sequence over sft
    lora = cfg.distill.lora if student else cfg.sft.lora
    trl = cfg.student_sft_args if student else cfg.sft.trl
    section = {
        "sft": dataclasses.asdict(cfg.sft),
        "lora": dataclasses.asdict(lora) if lora else None,
        "base_model": base,
    }
    if generated:
        section["generated_data"] = generated
    with tracking.open_stage(cfg, name, section, data_report=(rows.report, "train")) as stage:
        tracking.log_params(
            {"train_rows": len(rows.train), "validation_rows": len(rows.validation), "data_digest": rows.digest}
        )
        tracking.log_model_input(base, "base")
        metrics, model_dir = training.train_sft(
            cfg, name, stage.out, base, rows.train, rows.validation, template, trl, lora
        )
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            template=template,
            lineage={"base_model": base},
            details={"data_digest": rows.digest},
        )


def run_student_sft(cfg: PipelineConfig, base: str, generated: str | None = None) -> StageResult:
    """The distillation student trained SFT-only on the same data: what `distill` is compared with."""
    return run_sft(cfg, base, generated, name="student_sft")
