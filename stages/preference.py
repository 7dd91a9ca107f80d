"""The preference step, whichever method the config names (`preference.method`).

dpo, kto, orpo and simpo learn from the pairs (stages/dpo.py); ppo (stages/ppo.py), rloo and
grpo (stages/online_rl.py) learn against a reward model, so the `reward` stage runs before
them (NEEDS_REWARD) and its model is passed in.
"""

from __future__ import annotations

from alignpipe.config import PipelineConfig

NEEDS_REWARD = ("ppo", "rloo", "grpo")


def run_preference(cfg: PipelineConfig, sft_model: str, template: str | None, reward_model: str | None = None) -> dict:
    """Run `cfg.preference.method` from the SFT model; result written to `<run_dir>/<method>.json`."""
    method = cfg.preference.method
    if method in NEEDS_REWARD and not reward_model:
        raise ValueError(f"preference.method {method!r} needs the reward model: run the `reward` stage first and pass its model_path")
    if method == "ppo":
        from stages.ppo import run_ppo

        return run_ppo(cfg, sft_model, reward_model, template)
    if method in NEEDS_REWARD:
        from stages.online_rl import run_online_rl

        return run_online_rl(cfg, sft_model, reward_model, template)
    from stages.dpo import run_offline

    return run_offline(cfg, sft_model, template)
