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

from datasets import Dataset

from alignpipe import data, tracking, training
from alignpipe.core import trl_api
from alignpipe.core.config import DataSource, PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.data import templates
from alignpipe.training import models


def run_sft(cfg: PipelineConfig, base: str, generated: str | None = None) -> StageResult:
    """Train the `base` model on the configured SFT data, plus `generated` (a Self-Instruct JSONL)."""
    if generated and not Path(generated).stat().st_size:
        print(f"sft: {generated} has no generated rows; training on the configured data alone")
        generated = None
    extra = [DataSource(path=generated, format="alpaca", category="self_instruct")] if generated else []
    rows = data.training_rows(cfg, "sft", extra)
    template = cfg.sft.template
    section = {"sft": dataclasses.asdict(cfg.sft), "base_model": base}
    if generated:
        section["generated_data"] = generated
    inputs = {
        **section,
        "data": rows.digest,
        "validation_rows": cfg.data.validation_rows,
        "seed": cfg.seed,
        "format_variation": cfg.formats.variation,
    }
    with tracking.open_stage(cfg, "sft", section, inputs, data_report=(rows.report, "train")) as stage:
        tok = models.load_tokenizer(base, cfg.model)
        if template == "chat" and not tok.chat_template:
            raise models.ModelSourceError(f"{base}: has no chat template; set sft.template=alpaca")
        # The trainer config first: under ZeRO-3 the model is partitioned as it loads.
        args = trl_api.make_config("sft", str(stage.out / "checkpoints"), cfg.sft.trl, ours=training.common_args(cfg))
        trainer = trl_api.trainer(
            "sft",
            model=models.load_model(base, cfg.model),
            args=args,
            train_dataset=_dataset(rows.train, template, cfg.formats.variation, cfg.seed),
            eval_dataset=_dataset(rows.validation, template) if rows.validation else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.sft.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        tracking.log_params(
            {"train_rows": len(rows.train), "validation_rows": len(rows.validation), "data_digest": rows.digest}
        )
        tracking.log_model_input(base, "base")
        metrics, model_dir = training.fit(trainer, tok, stage.out, "sft")
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            template=template,
            lineage={"base_model": base},
            details={"data_digest": rows.digest},
        )


def _dataset(rows: list[dict], template: str, variation: float = 0.0, seed: int = 0) -> Dataset:
    """TRL prompt/completion rows; a `variation` share of them in a varied format."""
    return Dataset.from_list(
        [
            {
                "prompt": templates.training_prompt(
                    template, r["instruction"], r["input"], r["history"], templates.pick_variant(r, variation, seed)
                ),
                "completion": templates.training_completion(template, r["output"]),
            }
            for r in rows
        ]
    )
