"""Stage `reward`: a reward model trained on the preference pairs with TRL's RewardTrainer.

It starts from the SFT model (or `reward.model_path`) with a fresh single-score head, learns
to score the chosen answer above the rejected one (Bradley-Terry loss), and reports its accuracy
on held-out validation pairs. The saved model is logged to the stage's MLflow run as the
`reward_model` artifact; the ppo/rloo/grpo runs and evaluation name that run and path.
"""

from __future__ import annotations

import dataclasses

from alignpipe import data, models, tracking, training, trl_api
from alignpipe.config import PipelineConfig


def run_reward(cfg: PipelineConfig, sft_model: str, template: str | None = None) -> dict:
    template = template or cfg.sft.template
    start = cfg.reward.model_path or sft_model
    rows, report = data.stage_rows(cfg, "preference")
    train_rows, val_rows = data.split_validation(rows, cfg.data.validation_rows)
    section = {"reward": dataclasses.asdict(cfg.reward), "start_model": start, "template": template}
    inputs = {**section, "data": data.rows_digest(rows), "validation_rows": cfg.data.validation_rows, "seed": cfg.seed}
    out = training.stage_dir(cfg, "reward", inputs)
    with tracking.stage_run(cfg, "reward", section) as run:
        tok = models.load_tokenizer(start, cfg.model)
        args = trl_api.make_config("reward", str(out / "checkpoints"), cfg.reward.trl, ours=training.common_args(cfg))
        model = models.load_scorer(start, cfg.model, pad_token_id=tok.pad_token_id)
        trainer = trl_api.trainer(
            "reward",
            model=model,
            args=args,
            train_dataset=training.pair_dataset(train_rows, template),
            eval_dataset=training.pair_dataset(val_rows, template) if val_rows else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.reward.lora, task_type="SEQ_CLS"),
            callbacks=[tracking.MetricsCallback()],
        )
        tracking.log_params({"train_pairs": len(train_rows), "validation_pairs": len(val_rows), "data_digest": inputs["data"], "start_model": start})
        data.log_report(report, "data_report", "preference")
        tracking.log_model_input(start, "base")
        metrics, model_dir = training.fit(trainer, tok, out, "reward")
        model_id = tracking.find_model(str(model_dir))  # fit logged it, weights included
        result = {
            "stage": "reward",
            "run_id": run.info.run_id,
            "model_path": str(model_dir),
            "model_uri": model_id and f"models:/{model_id}",
            "start_model": start,
            "template": template,
            "metrics": metrics,
            "data_digest": inputs["data"],
        }
        tracking.log_json(result, "result.json")
    tracking.write_result(cfg.run_dir / "reward.json", result)
    return result
