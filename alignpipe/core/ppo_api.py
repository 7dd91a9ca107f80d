"""The one place that imports PPO: `trl.experimental.ppo`, which exists only up to trl 1.12.

TRL removed PPOTrainer after 1.12 (huggingface/trl PR #7020), so the project pins trl==1.12.0;
tests/test_preference_methods.py fails loudly if this import or the API used here moves.
"""

from __future__ import annotations

import os

# trl.experimental is used knowingly (pinned trl==1.12.0): no warning on every import.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def classes() -> tuple[type, type]:
    """(PPOConfig, PPOTrainer)."""
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    return PPOConfig, PPOTrainer


def trainer(
    *,
    args,
    processing_class,
    policy,
    reference,
    reward_model,
    value_model,
    train_dataset,
    eval_dataset,
    callbacks,
    peft_config=None,
):
    """PPOTrainer over pre-tokenised prompts (an `input_ids` column); reward/value models are
    single-label sequence classifiers; `reference` None with LoRA means the adapter disabled."""
    _, cls = classes()
    return cls(
        args=args,
        processing_class=processing_class,
        model=policy,
        ref_model=reference,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
        peft_config=peft_config,
    )
