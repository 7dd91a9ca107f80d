"""Stage `ppo`: RLHF as InstructGPT did it, with TRL's PPOTrainer (trl 1.12, `alignpipe.core.ppo_api`).

The policy starts from the SFT model; the reward model comes from the `reward` stage; the value
model starts from that reward model (as in InstructGPT); the KL penalty (`kl_coef`) is taken
against the SFT model (TRL copies it; with LoRA, the policy with its adapter disabled). Prompts
are the preference data's prompts under the SFT template; responses are sampled, scored by the
reward model, and the policy and value heads updated. `preference.max_steps` counts PPO updates
(TRL's `total_episodes` = updates x batch) unless `total_episodes` is set.

Runs in process only, and a killed run starts over: TRL's PPOTrainer cannot resume.
Logged per update: objective/kl, objective/scores (reward), objective/rlhf_reward,
loss/policy_avg, loss/value_avg, policy/entropy_avg, ... (slashes become underscores in MLflow).
"""

from __future__ import annotations

import dataclasses

from datasets import Dataset

from alignpipe import data, tracking, training
from alignpipe.core import ppo_api, trl_api
from alignpipe.core.config import PipelineConfig
from alignpipe.core.result import StageResult
from alignpipe.data import templates
from alignpipe.training import models

# PPO needs no checkpoints (it cannot resume) and no sample tables; responses end at EOS.
_OURS = {"save_strategy": "no", "num_sample_generations": 0, "stop_token": "eos"}


def run_ppo(cfg: PipelineConfig, sft: str, reward: str, template: str | None = None) -> StageResult:
    """PPO from the `sft` model against the `reward` model (which also starts the value model)."""
    template = template or cfg.sft.template
    rows = data.training_rows(cfg, "preference")
    section = {
        "preference": dataclasses.asdict(cfg.preference),
        "sft_model": sft,
        "reward_model": reward,
        "template": template,
    }
    with tracking.open_stage(cfg, "ppo", section, data_report=(rows.report, "preference")) as stage:
        tok = models.load_tokenizer(sft, cfg.model)
        tok.padding_side = "left"  # PPO batches prompts for generation: pad them on the left
        args = trl_api.make_config(
            "ppo", str(stage.out / "checkpoints"), cfg.preference.trl, ours={**training.common_args(cfg), **_OURS}
        )
        if args.total_episodes is None and args.max_steps > 0:
            args.total_episodes = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        trainer = ppo_api.trainer(
            args=args,
            processing_class=tok,
            policy=models.load_model(sft, cfg.model),
            reference=None,  # TRL copies the SFT policy (or disables the LoRA adapter)
            reward_model=models.load_scorer(reward, cfg.model, pad_token_id=tok.pad_token_id),
            value_model=models.load_scorer(reward, cfg.model, pad_token_id=tok.pad_token_id),
            train_dataset=_prompts(rows.train, template, tok),
            eval_dataset=_prompts(rows.validation or rows.train[:8], template, tok),
            callbacks=[tracking.MetricsCallback()],
            peft_config=training.lora_config(cfg.preference.lora),
        )
        tracking.log_params(
            {
                "train_prompts": len(trainer.train_dataset),
                "data_digest": rows.digest,
                "reference_model": sft,
                "reward_model": reward,
                "value_model_init": reward,
                "total_episodes": args.total_episodes,
            }
        )
        tracking.tag_upstream(cfg, "reward", reward)
        tracking.tag_upstream(cfg, "sft", sft)
        tracking.log_model_input(sft, "reference")  # also the initial policy
        tracking.log_model_input(reward, "reward")  # also the value model's start
        trainer.train()
        logged = [h for h in trainer.state.log_history if "objective/kl" in h]
        metrics = {k: float(v) for k, v in (logged[-1] if logged else {}).items() if isinstance(v, (int, float))}
        if logged:
            metrics["first_scores"] = float(logged[0]["objective/scores"])
        metrics["global_step"] = float(trainer.state.global_step)
        tracking.log_metrics({f"final_{k.replace('/', '_')}": v for k, v in metrics.items()})
        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        model_dir = training.save_model(policy, tok, stage.out / "model")
        tracking.log_model(model_dir, "ppo")
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            template=template,
            lineage={"reference_model": sft, "reward_model": reward},
            details={"data_digest": rows.digest},
        )


def _prompts(rows: list[dict], template: str, tok) -> Dataset:
    """Distinct prompts as the generation-time text, pre-tokenised (PPOTrainer takes input_ids)."""
    texts = list(dict.fromkeys(templates.generation_prompt(template, tok, r["instruction"], r["input"]) for r in rows))
    return Dataset.from_dict({"input_ids": [tok(t)["input_ids"] for t in texts]})
