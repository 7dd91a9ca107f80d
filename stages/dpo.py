"""Stage `dpo` (and `kto`, `orpo`, `simpo`): offline preference optimisation from the SFT model.

One module for the methods that learn straight from the preference pairs, each with its TRL
trainer: DPO (DPOTrainer), KTO (KTOTrainer; TRL unpairs the pairs into desirable/undesirable
answers), ORPO (ORPOTrainer, no reference model) and SimPO (TRL's CPOTrainer with
`loss_type: simpo`, reference-free). For DPO and KTO the reference is the SFT model itself (TRL
copies it; with LoRA it is the policy with its adapter disabled). Pairs are formatted with the
template the SFT stage trained with. Logs TRL's rewards/accuracies and margins, on the train
steps and on held-out validation pairs. Pairs come from `data.stage_rows` (any preference
format, mixture, policy, dedup, decontamination against the eval sets including the eval
pairs); its report is logged to the run.
"""

from __future__ import annotations

import dataclasses

from alignpipe import data, models, tracking, training, trl_api
from alignpipe.config import PipelineConfig

OFFLINE_METHODS = ("dpo", "kto", "orpo", "simpo")
_WITH_REFERENCE = ("dpo", "kto")


def run_dpo(cfg: PipelineConfig, sft_model: str, template: str | None = None) -> dict:
    """DPO from the SFT model (the config's `preference.method` must be dpo)."""
    if cfg.preference.method != "dpo":
        raise ValueError(f"run_dpo: preference.method is {cfg.preference.method!r}; use stages.preference.run_preference")
    return run_offline(cfg, sft_model, template)


def run_offline(cfg: PipelineConfig, sft_model: str, template: str | None = None) -> dict:
    """Train `preference.method` (dpo | kto | orpo | simpo) on the pairs, from the SFT model."""
    method = cfg.preference.method
    if method not in OFFLINE_METHODS:
        raise ValueError(f"run_offline: {method!r} is not one of {', '.join(OFFLINE_METHODS)}")
    kind, fixed = trl_api.METHODS[method]
    template = template or cfg.sft.template
    rows, report = data.stage_rows(cfg, "preference")
    train_rows, val_rows = data.split_validation(rows, cfg.data.validation_rows)
    section = {"preference": dataclasses.asdict(cfg.preference), "sft_model": sft_model, "template": template}
    inputs = {**section, "data": data.rows_digest(rows), "validation_rows": cfg.data.validation_rows, "seed": cfg.seed,
              "format_variation": cfg.formats.variation}
    out = training.stage_dir(cfg, method, inputs)
    with tracking.stage_run(cfg, method, section) as run:
        tok = models.load_tokenizer(sft_model, cfg.model)
        ours = {**training.common_args(cfg), **fixed}
        args = trl_api.make_config(kind, str(out / "checkpoints"), cfg.preference.trl, ours=ours)  # first: under ZeRO-3 the model is partitioned as it loads
        model = models.load_model(sft_model, cfg.model)
        trainer = trl_api.trainer(
            kind,
            model=model,  # no ref_model: TRL makes the reference (dpo, kto) from the same SFT weights
            args=args,
            train_dataset=training.pair_dataset(train_rows, template, cfg.formats.variation, cfg.seed),
            eval_dataset=training.pair_dataset(val_rows, template) if val_rows else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.preference.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        lineage = {"reference_model": sft_model} if method in _WITH_REFERENCE else {}
        tracking.log_params({"train_pairs": len(train_rows), "validation_pairs": len(val_rows), "data_digest": inputs["data"], "sft_model": sft_model, **lineage})
        data.log_report(report, "data_report", "preference")
        tracking.log_model_input(sft_model, "reference" if lineage else "policy")  # the initial policy, and the reference of dpo/kto
        metrics, model_dir = training.fit(trainer, tok, out, method)
        result = {
            "stage": method,
            "run_id": run.info.run_id,
            "model_path": str(model_dir),
            **lineage,
            "template": template,
            "metrics": metrics,
            "data_digest": inputs["data"],
        }
        tracking.log_json(result, "result.json")
    tracking.write_result(cfg.run_dir / f"{method}.json", result)
    return result
