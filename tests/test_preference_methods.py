"""Every preference method trains the tiny model for real, from the SFT model; the reward model
trains and judges; PPO runs end to end through `alignpipe run`; the pinned PPO API is still there."""

import inspect
import json
import math
from importlib import metadata

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM

from alignpipe.core.recipe import load_config
from alignpipe.core.registry import NEEDS_REWARD, PREFERENCE_METHODS
from alignpipe.core.result import StageResult
from alignpipe.flows.runner import run_stage

from conftest import ROOT, SMALL_CANDIDATE, run_cli

pytestmark = pytest.mark.slow

FAST = [
    SMALL_CANDIDATE,
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=12",
    "sft.save_steps=6",
    "sft.logging_steps=4",
    "reward.max_steps=8",
    "reward.save_steps=4",
    "reward.logging_steps=2",
    "preference.max_steps=4",
    "preference.per_device_train_batch_size=8",
    "preference.logging_steps=1",
    "evaluate.max_new_tokens=8",
    "evaluate.num_samples=6",
]
# What each method must log (MLflow keys: TRL's names with / -> _).
LOGGED = {
    "dpo": ("rewards_accuracies", "rewards_margins"),
    "ipo": ("rewards_accuracies", "rewards_margins"),
    "kto": ("kl", "eval_kl", "eval_logits_chosen"),
    "orpo": ("rewards_accuracies", "log_odds_ratio"),
    "simpo": ("rewards_accuracies", "rewards_margins"),
    "ppo": ("objective_kl", "objective_scores", "objective_rlhf_reward", "loss_policy_avg", "loss_value_avg"),
    "rloo": ("reward", "kl"),
    "grpo": ("reward", "kl"),
}


def config(*extra):
    return load_config(ROOT / "configs" / "tiny.yaml", FAST + list(extra))


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    d = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_HOME", str(d))
        yield d


@pytest.fixture(scope="module")
def sft(state):
    cfg = config()
    return run_stage(cfg, "sft", {"base": run_stage(cfg, "select", {}).model_path})


@pytest.fixture(scope="module")
def reward(state, sft):
    return run_stage(config(), "reward", {"sft": sft.model_path, "template": sft.template})


def weights(path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(path).state_dict()


def run_of(cfg, run_id):
    mlflow.set_tracking_uri(cfg.tracking_uri)
    return mlflow.get_run(run_id)


def test_pinned_ppo_api_is_still_there():
    """TRL removed PPO after 1.12 (huggingface/trl PR #7020): if this fails, the pin moved."""
    assert metadata.version("trl") == "1.12.0", "trl must stay pinned to 1.12.0: later releases have no PPOTrainer"
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from alignpipe.core import ppo_api

    assert ppo_api.classes() == (PPOConfig, PPOTrainer)
    params = set(inspect.signature(PPOTrainer.__init__).parameters)
    assert {
        "args",
        "processing_class",
        "model",
        "ref_model",
        "reward_model",
        "value_model",
        "train_dataset",
        "eval_dataset",
        "callbacks",
        "peft_config",
    } <= params, params
    fields = set(PPOConfig.__dataclass_fields__)
    assert {
        "total_episodes",
        "response_length",
        "num_mini_batches",
        "kl_coef",
        "stop_token",
        "num_sample_generations",
        "missing_eos_penalty",
        "vf_coef",
        "cliprange",
    } <= fields


def test_every_method_has_tiny_settings_that_validate(state):
    for method in PREFERENCE_METHODS:
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"preference.method={method}"])
        assert cfg.preference.trl.get("max_steps"), method
    dpo = load_config(ROOT / "configs" / "tiny.yaml")
    assert dpo.preference.method == "dpo" and dpo.preference.trl == {  # the default recipe's DPO, as before
        "beta": 0.1,
        "loss_type": ["sigmoid", "sft"],
        "max_steps": 120,
        "learning_rate": 3e-4,
        "per_device_train_batch_size": 16,
        "max_length": 256,
        "logging_steps": 10,
        "save_steps": 60,
    }
    assert load_config(ROOT / "configs" / "tiny.yaml", ["preference.max_steps=5"]).preference.trl["max_steps"] == 5


def test_method_fields_are_checked_against_its_own_trl_config():
    from alignpipe.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_config(
            ROOT / "configs" / "tiny.yaml",
            ["preference.method=ppo", "preference.beta=0.1", "preference.ppo.kl_coeff=1"],
        )
    text = "\n".join(info.value.problems)
    assert "unknown key 'preference.beta' (nor a field of trl.PPOConfig)" in text
    assert "'preference.ppo.kl_coeff'" in text and "did you mean 'preference.ppo.kl_coef'" in text


def test_reward_model_trains_and_logs_heldout_accuracy(state, sft, reward):
    cfg = config()
    m = reward.metrics
    assert 0 <= m["eval_accuracy"] <= 1 and math.isfinite(m["train_loss"]) and m["global_step"] == 8
    run = run_of(cfg, reward.run_id)
    assert run.info.status == "FINISHED" and "eval_accuracy" in run.data.metrics
    model = mlflow.get_logged_model(reward.details["model_uri"].removeprefix("models:/"))
    assert model.source_run_id == reward.run_id and model.name == "reward"
    assert "model.safetensors" in {a.path for a in mlflow.MlflowClient().list_logged_model_artifacts(model.model_id)}
    assert json.loads((cfg.run_dir / "reward.json").read_text())["run_id"] == reward.run_id


@pytest.mark.parametrize("method", PREFERENCE_METHODS)
def test_method_trains_from_sft(method, state, sft, reward):
    cfg = config(f"preference.method={method}")
    result = run_stage(
        cfg,
        "preference",
        {
            "sft": sft.model_path,
            "template": sft.template,
            "reward": reward.model_path if method in NEEDS_REWARD else None,
        },
    )
    assert (
        result.stage == method and json.loads((cfg.run_dir / f"{method}.json").read_text())["run_id"] == result.run_id
    )
    before, after = weights(sft.model_path), weights(result.model_path)
    assert [k for k in before if not torch.equal(before[k], after[k])], f"{method} left every weight unchanged"
    run = run_of(cfg, result.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == method
    for key in LOGGED[method]:
        assert key in run.data.metrics, (method, key, sorted(run.data.metrics))
    args = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/trainer_args.json"))  # what TRL got
    assert args["max_steps"] == 4 == int(run.data.params["trl.max_steps"]), (method, args["max_steps"])
    assert args["learning_rate"] == cfg.preference.trl["learning_rate"] == float(run.data.params["trl.learning_rate"])
    if method in NEEDS_REWARD:
        assert result.lineage["reward_model"] == reward.model_path == run.data.params["reward_model"]
        assert run.data.tags["alignpipe.reward_run_id"] == reward.run_id
        assert run.data.params["reference_model"] == sft.model_path


def test_evaluate_adds_reward_model_win_rates(state, sft, reward):
    cfg = config("preference.method=ppo")
    ppo = (
        StageResult.read(cfg.run_dir / "ppo.json")
        if (cfg.run_dir / "ppo.json").is_file()
        else run_stage(
            cfg, "preference", {"sft": sft.model_path, "template": sft.template, "reward": reward.model_path}
        )
    )
    models = {"sft": sft.model_path, "ppo": ppo.model_path}
    result = run_stage(cfg, "evaluate", {"models": models, "template": sft.template, "reward": reward.model_path})
    sft_m, ppo_m = result.metrics["sft"], result.metrics["ppo"]
    assert sft_m["rm_win_rate"] == 0.5 and 0 <= ppo_m["rm_win_rate"] <= 1
    assert math.isfinite(ppo_m["rm_score"])
    run = run_of(cfg, result.run_id)
    assert "ppo/rm_win_rate" in run.data.metrics and run.data.tags["alignpipe.reward_run_id"] == reward.run_id


def test_alignpipe_run_with_ppo(state, sft):
    """The whole pipeline from the CLI with preference.method=ppo: reward stage first, then PPO, then evaluation."""
    out = run_cli(
        "run",
        "configs/tiny.yaml",
        *[a for o in FAST for a in ("--set", o)],
        "--set",
        "preference.method=ppo",
        env={"ALIGNPIPE_HOME": str(state), "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reward model: held-out pair accuracy" in out.stdout
    table = out.stdout[out.stdout.index("Evaluation on the frozen suite") :].splitlines()
    assert table[2].split()[:4] == ["metric", "base", "sft", "ppo"]
    assert any(line.startswith("rm_win_rate") for line in table[3:])
    cfg = config("preference.method=ppo")
    mlflow.set_tracking_uri(cfg.tracking_uri)
    names = [r.info.run_name for r in mlflow.search_runs(experiment_names=[cfg.experiment], output_format="list")]
    assert {"reward", "ppo", "evaluate"} <= set(names)


def test_stage_named_after_a_method_runs_it_with_the_earlier_reward_model(state, sft, reward):
    """`alignpipe stage ppo` on a dpo recipe: runs PPO, taking the SFT and reward models of this experiment."""
    out = run_cli(
        "stage",
        "ppo",
        "configs/tiny.yaml",
        *[a for o in FAST for a in ("--set", o)],
        "--set",
        "preference.method=dpo",
        env={"ALIGNPIPE_HOME": str(state), "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    cfg = config("preference.method=ppo")
    result = json.loads((cfg.run_dir / "ppo.json").read_text())
    assert f"ppo: MLflow run {result['run_id']}" in out.stdout
    assert result["reward_model"] == json.loads((cfg.run_dir / "reward.json").read_text())["model_path"]
    assert result["reference_model"] == json.loads((cfg.run_dir / "sft.json").read_text())["model_path"]
