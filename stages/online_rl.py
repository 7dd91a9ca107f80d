"""Stage `rloo` / `grpo`: online RL from the SFT model with TRL's RLOOTrainer / GRPOTrainer.

For each prompt of the preference data (under the SFT template) the policy samples
`num_generations` answers; the trained reward model (from the `reward` stage) scores them, as
prompt + answer + EOS, the way it saw its training pairs (TRL would score the decoded text
without the EOS, the position the reward model was not trained to read), and
each answer's advantage is its reward against the others' (RLOO: leave-one-out mean; GRPO:
group-normalised). `beta` is the KL penalty to the SFT model. Resumes from its last checkpoint
like the other training stages; runs in process only.
"""

from __future__ import annotations

import dataclasses

from datasets import Dataset

from alignpipe import data, tracking, training
from alignpipe.core import trl_api
from alignpipe.core.config import PipelineConfig
from alignpipe.core.registry import METHODS
from alignpipe.core.result import StageResult
from alignpipe.data import templates
from alignpipe.evaluation import scoring
from alignpipe.training import models


def run_online_rl(cfg: PipelineConfig, sft: str, reward: str, template: str | None = None) -> StageResult:
    """Train `preference.method` (rloo | grpo) against the `reward` model, from the `sft` model."""
    method = METHODS[cfg.preference.method]
    template = template or cfg.sft.template
    rows = data.training_rows(cfg, "preference")
    section = {
        "preference": dataclasses.asdict(cfg.preference),
        "sft_model": sft,
        "reward_model": reward,
        "template": template,
    }
    with tracking.open_stage(cfg, method.name, section, data_report=(rows.report, "preference")) as stage:
        tok = models.load_tokenizer(sft, cfg.model)
        scorer = models.load_scorer(reward, cfg.model).eval()
        args = trl_api.make_config(
            method.trl_kind,
            str(stage.out / "checkpoints"),
            cfg.preference.trl,
            ours={**training.common_args(cfg), **method.defaults, **method.locked},
        )
        distinct = {(r["instruction"], r["input"]): None for r in rows.train}
        prompts = [templates.training_prompt(template, instruction, inp) for instruction, inp in distinct]
        trainer = trl_api.trainer(
            method.trl_kind,
            model=models.load_model(sft, cfg.model),
            reward_funcs=_reward_function(scorer, models.load_tokenizer(reward, cfg.model), cfg.evaluate.batch_size),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tok,
            peft_config=training.lora_config(cfg.preference.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        scorer.to(trainer.accelerator.device)
        tracking.log_params(
            {"train_prompts": len(prompts), "data_digest": rows.digest, "reference_model": sft, "reward_model": reward}
        )
        tracking.tag_upstream(cfg, "reward", reward)
        tracking.tag_upstream(cfg, "sft", sft)
        tracking.log_model_input(sft, "reference")  # also the initial policy
        tracking.log_model_input(reward, "reward")
        metrics, model_dir = training.fit(trainer, tok, stage.out, method.name)
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            template=template,
            lineage={"reference_model": sft, "reward_model": reward},
            details={"data_digest": rows.digest},
        )


def _reward_function(scorer, tok, batch_size: int):
    """The reward model as a TRL reward function: prompt + completion + EOS, as in its training."""

    def reward_model(prompts, completions, **_):
        if prompts and isinstance(prompts[0], list):  # chat template: message lists
            prompts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
            completions = [c[-1]["content"] for c in completions]
        return scoring.reward_scores(scorer, tok, prompts, completions, batch_size, label=None)  # once a step

    return reward_model
