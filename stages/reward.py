"""Stage `reward`: a reward model trained on the preference pairs with TRL's RewardTrainer.

It starts from the SFT model (or `reward.model_path`) with a fresh single-score head, learns
to score the chosen answer above the rejected one (Bradley-Terry loss), and reports its accuracy
on held-out validation pairs. The saved model is logged to the stage's MLflow run as the
`reward_model` artifact; the ppo/rloo/grpo runs and evaluation name that run and path.
"""

from __future__ import annotations

import dataclasses

from alignpipe import data, tracking, training
from alignpipe.core import trl_api
from alignpipe.core.config import PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.training import models


def run_reward(cfg: PipelineConfig, sft: str, template: str | None = None) -> StageResult:
    """Train a reward model from `reward.model_path`, else from the `sft` model."""
    template = template or cfg.sft.template
    start = cfg.reward.model_path or sft
    rows = data.training_rows(cfg, "preference")
    section = {"reward": dataclasses.asdict(cfg.reward), "start_model": start, "template": template}
    with tracking.open_stage(cfg, "reward", section, data_report=(rows.report, "preference")) as stage:
        tok = models.load_tokenizer(start, cfg.model)
        args = trl_api.make_config(
            "reward", str(stage.out / "checkpoints"), cfg.reward.trl, ours=training.common_args(cfg)
        )
        trainer = trl_api.trainer(
            "reward",
            model=models.load_scorer(start, cfg.model, pad_token_id=tok.pad_token_id),
            args=args,
            train_dataset=training.pair_dataset(rows.train, template),
            eval_dataset=training.pair_dataset(rows.validation, template) if rows.validation else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.reward.lora, task_type="SEQ_CLS"),
            callbacks=[tracking.MetricsCallback()],
        )
        tracking.log_params(
            {
                "train_pairs": len(rows.train),
                "validation_pairs": len(rows.validation),
                "data_digest": rows.digest,
                "start_model": start,
            }
        )
        tracking.log_model_input(start, "base")
        metrics, model_dir = training.fit(trainer, tok, stage.out, "reward")
        model_id = tracking.find_model(str(model_dir))  # fit logged it, weights included
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            template=template,
            lineage={"start_model": start},
            details={"model_uri": model_id and f"models:/{model_id}", "data_digest": rows.digest},
        )
