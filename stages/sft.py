"""Stage `sft`: instruction tuning with TRL's SFTTrainer, loss on the response only.

Rows become TRL prompt/completion rows under the chosen template (Alpaca, or the model's chat
template), so only completion tokens carry loss. Packing and LoRA are options (`sft.packing`,
`sft.lora`); every other TRL SFTConfig field passes through from the `sft` section. A job killed
part-way resumes from its last checkpoint when run again with the same inputs.

Rows come from `data.stage_rows` (mixture, bad-row policy, held-out categories, refusal mixing,
dedup, decontamination); its report is logged to the run. A Self-Instruct file
(`generated_data`) joins the mixture as one more source.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from datasets import Dataset

from alignpipe import data, models, templates, tracking, training, trl_api
from alignpipe.config import DataSource, PipelineConfig


def run_sft(cfg: PipelineConfig, base_model: str, generated_data: str | None = None) -> dict:
    """Train `base_model` on the configured SFT data, plus `generated_data` (a Self-Instruct JSONL)
    when given; with self_instruct.enabled and none given, the experiment's latest Self-Instruct
    result is used (so launched ranks and `alignpipe stage sft` see the same rows)."""
    if generated_data is None and cfg.self_instruct.enabled and (cfg.run_dir / "self_instruct.json").is_file():
        generated_data = json.loads((cfg.run_dir / "self_instruct.json").read_text())["data_path"]
    if generated_data and not Path(generated_data).stat().st_size:
        print(f"sft: {generated_data} has no generated rows; training on the configured data alone")
        generated_data = None
    extra = [DataSource(path=generated_data, format="alpaca", category="self_instruct")] if generated_data else []
    rows, report = data.stage_rows(cfg, "sft", extra)
    train_rows, val_rows = data.split_validation(rows, cfg.data.validation_rows)
    template = cfg.sft.template
    section = {"sft": dataclasses.asdict(cfg.sft), "base_model": base_model}
    if generated_data:
        section["generated_data"] = generated_data
    inputs = {**section, "data": data.rows_digest(rows), "validation_rows": cfg.data.validation_rows, "seed": cfg.seed,
              "format_variation": cfg.formats.variation}
    out = training.stage_dir(cfg, "sft", inputs)
    with tracking.stage_run(cfg, "sft", section) as run:
        tok = models.load_tokenizer(base_model, cfg.model)
        if template == "chat" and not tok.chat_template:
            raise models.ModelSourceError(f"{base_model}: has no chat template; set sft.template=alpaca")
        args = trl_api.make_config("sft", str(out / "checkpoints"), cfg.sft.trl, ours=training.common_args(cfg))  # first: under ZeRO-3 the model is partitioned as it loads
        model = models.load_model(base_model, cfg.model)
        trainer = trl_api.trainer(
            "sft",
            model=model,
            args=args,
            train_dataset=_dataset(train_rows, template, cfg.formats.variation, cfg.seed),
            eval_dataset=_dataset(val_rows, template) if val_rows else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.sft.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        tracking.log_params({"train_rows": len(train_rows), "validation_rows": len(val_rows), "data_digest": inputs["data"]})
        data.log_report(report, "data_report", "train")
        tracking.log_model_input(base_model, "base")
        metrics, model_dir = training.fit(trainer, tok, out, "sft")
        result = {
            "stage": "sft",
            "run_id": run.info.run_id,
            "model_path": str(model_dir),
            "base_model": base_model,
            "template": template,
            "metrics": metrics,
            "data_digest": inputs["data"],
        }
        tracking.log_json(result, "result.json")
    tracking.write_result(cfg.run_dir / "sft.json", result)
    return result


def _dataset(rows: list[dict], template: str, variation: float = 0.0, seed: int = 0) -> Dataset:
    """TRL prompt/completion rows; a `variation` share of them in a varied format."""
    return Dataset.from_list(
        [
            {
                "prompt": templates.training_prompt(template, r["instruction"], r["input"], r["history"], templates.pick_variant(r, variation, seed)),
                "completion": templates.training_completion(template, r["output"]),
            }
            for r in rows
        ]
    )

