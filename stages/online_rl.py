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

from alignpipe import data, models, scoring, templates, tracking, training, trl_api
from alignpipe.config import PipelineConfig

ONLINE_METHODS = ("rloo", "grpo")


def run_online_rl(cfg: PipelineConfig, sft_model: str, reward_model: str, template: str | None = None) -> dict:
    """Train `preference.method` (rloo | grpo) against the reward model, from the SFT model."""
    method = cfg.preference.method
    if method not in ONLINE_METHODS:
        raise ValueError(f"run_online_rl: {method!r} is not one of {', '.join(ONLINE_METHODS)}")
    template = template or cfg.sft.template
    rows, report = data.stage_rows(cfg, "preference")
    train_rows, _ = data.split_validation(rows, cfg.data.validation_rows)
    section = {"preference": dataclasses.asdict(cfg.preference), "sft_model": sft_model, "reward_model": reward_model, "template": template}
    inputs = {**section, "data": data.rows_digest(rows), "validation_rows": cfg.data.validation_rows, "seed": cfg.seed}
    out = training.stage_dir(cfg, method, inputs)
    with tracking.stage_run(cfg, method, section) as run:
        tok = models.load_tokenizer(sft_model, cfg.model)
        scorer = models.load_scorer(reward_model, cfg.model).eval()
        args = trl_api.make_config(method, str(out / "checkpoints"), cfg.preference.trl, ours=training.common_args(cfg))
        distinct = {(r["instruction"], r["input"]): None for r in train_rows}
        prompts = [templates.training_prompt(template, instruction, inp) for instruction, inp in distinct]
        trainer = trl_api.trainer(
            method,
            model=models.load_model(sft_model, cfg.model),
            reward_funcs=_reward_function(scorer, models.load_tokenizer(reward_model, cfg.model), cfg.evaluate.batch_size),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tok,
            peft_config=training.lora_config(cfg.preference.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        scorer.to(trainer.accelerator.device)
        tracking.log_params({"train_prompts": len(prompts), "data_digest": inputs["data"], "reference_model": sft_model, "reward_model": reward_model})
        tracking.tag_upstream(cfg, "reward", reward_model)
        tracking.tag_upstream(cfg, "sft", sft_model)
        data.log_report(report, "data_report", "preference")
        tracking.log_model_input(sft_model, "reference")  # also the initial policy
        tracking.log_model_input(reward_model, "reward")
        metrics, model_dir = training.fit(trainer, tok, out, method)
        result = {
            "stage": method,
            "run_id": run.info.run_id,
            "model_path": str(model_dir),
            "reference_model": sft_model,
            "reward_model": reward_model,
            "template": template,
            "metrics": metrics,
            "data_digest": inputs["data"],
        }
        tracking.log_json(result, "result.json")
    tracking.write_result(cfg.run_dir / f"{method}.json", result)
    return result


def _reward_function(scorer, tok, batch_size: int):
    """The reward model as a TRL reward function: prompt + completion + EOS, as in its training."""

    def reward_model(prompts, completions, **_):
        if prompts and isinstance(prompts[0], list):  # chat template: message lists
            prompts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
            completions = [c[-1]["content"] for c in completions]
        return scoring.reward_scores(scorer, tok, prompts, completions, batch_size)

    return reward_model
