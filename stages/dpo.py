"""Stage `dpo`: preference optimisation with TRL's DPOTrainer, starting from the SFT model.

The reference model is the SFT model itself (TRL copies it; with LoRA it is the policy with its
adapter disabled). Pairs are formatted with the template the SFT stage trained with. Logs TRL's
rewards/accuracies and margins, on the train steps and on held-out validation pairs. Pairs come
from `data.stage_rows` (any preference format, mixture, policy, dedup, decontamination against
the eval sets including the eval pairs); its report is logged to the run.
"""

from __future__ import annotations

import dataclasses

from datasets import Dataset

from alignpipe import data, models, templates, tracking, training, trl_api
from alignpipe.config import PipelineConfig


def run_dpo(cfg: PipelineConfig, sft_model: str, template: str | None = None) -> dict:
    template = template or cfg.sft.template
    rows, report = data.stage_rows(cfg, "preference")
    train_rows, val_rows = data.split_validation(rows, cfg.data.validation_rows)
    section = {"preference": dataclasses.asdict(cfg.preference), "sft_model": sft_model, "template": template}
    inputs = {**section, "data": data.rows_digest(rows), "validation_rows": cfg.data.validation_rows, "seed": cfg.seed,
              "format_variation": cfg.formats.variation}
    out = training.stage_dir(cfg, "dpo", inputs)
    with tracking.stage_run(cfg, "dpo", section) as run:
        tok = models.load_tokenizer(sft_model, cfg.model)
        args = trl_api.make_config("dpo", str(out / "checkpoints"), cfg.preference.trl, ours=training.common_args(cfg))  # first: under ZeRO-3 the model is partitioned as it loads
        model = models.load_model(sft_model, cfg.model)
        trainer = trl_api.trainer(
            "dpo",
            model=model,  # no ref_model: TRL makes the reference from the same SFT weights
            args=args,
            train_dataset=_dataset(train_rows, template, cfg.formats.variation, cfg.seed),
            eval_dataset=_dataset(val_rows, template) if val_rows else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.preference.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        tracking.log_params({"train_pairs": len(train_rows), "validation_pairs": len(val_rows), "data_digest": inputs["data"], "reference_model": sft_model})
        data.log_report(report, "data_report", "preference")
        tracking.log_model_input(sft_model, "reference")  # also the initial policy
        metrics, model_dir = training.fit(trainer, tok, out, "dpo")
        result = {
            "stage": "dpo",
            "run_id": run.info.run_id,
            "model_path": str(model_dir),
            "reference_model": sft_model,
            "template": template,
            "metrics": metrics,
            "data_digest": inputs["data"],
        }
        tracking.log_json(result, "result.json")
    tracking.write_result(cfg.run_dir / "dpo.json", result)
    return result


def _dataset(rows: list[dict], template: str, variation: float = 0.0, seed: int = 0) -> Dataset:
    return Dataset.from_list(
        [
            {
                "prompt": templates.training_prompt(template, r["instruction"], r["input"], r["history"], templates.pick_variant(r, variation, seed)),
                "chosen": templates.training_completion(template, r["chosen"]),
                "rejected": templates.training_completion(template, r["rejected"]),
            }
            for r in rows
        ]
    )
