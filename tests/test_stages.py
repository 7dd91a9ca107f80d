"""Each stage really trains or scores a tiny model, and lands one MLflow run with what a user checks."""

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from transformers import AutoModelForCausalLM

from alignpipe.core.recipe import load_config
from alignpipe.evaluation.stats import HEADLINE
from alignpipe.flows.runner import resolve_inputs, run_stage

from conftest import ROOT, SMALL

pytestmark = pytest.mark.slow

SMALLER = "{arch: qwen2, hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, pretrain_steps: 10}"
FAST = [
    f"model.candidates=[{{name: small, tiny: {SMALL}}}, {{name: smaller, tiny: {SMALLER}}}]",
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=12",
    "sft.save_steps=6",
    "sft.logging_steps=4",
    "preference.max_steps=6",
    "preference.save_steps=3",
    "preference.logging_steps=2",
    "evaluate.max_new_tokens=8",
    "evaluate.num_samples=6",
]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    state = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_HOME", str(state))
        yield load_config(ROOT / "configs" / "tiny.yaml", FAST)


@pytest.fixture(scope="module")
def selected(cfg):
    return run_stage(cfg, "select", {})


@pytest.fixture(scope="module")
def sft(cfg, selected):
    return run_stage(cfg, "sft", {"base": selected.model_path})


@pytest.fixture(scope="module")
def dpo(cfg, sft):
    return run_stage(cfg, "preference", {"sft": sft.model_path, "template": sft.template})


def weights(path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def moved(before: dict, after: dict) -> list[str]:
    assert before.keys() == after.keys()
    return [k for k in before if not torch.equal(before[k], after[k])]


def run_of(cfg, run_id):
    mlflow.set_tracking_uri(cfg.tracking_uri)
    return mlflow.get_run(run_id)


def assert_trainer_args(run, recipe: dict, max_steps: int) -> dict:
    """The stage's run has what TRL got: all of it as trainer_args.json, and as `trl.*` params what
    differs from TRL's defaults (the recipe's learning rate; TRL's bf16 and gradient checkpointing,
    which the stage turns off), but not the run's own output folder nor what equals TRL's default."""
    path = mlflow.MlflowClient().download_artifacts(run.info.run_id, "trainer_args.json")
    args = json.loads(Path(path).read_text())
    assert args["max_steps"] == max_steps and args["learning_rate"] == recipe["learning_rate"]
    params = run.data.params
    assert params["trl.max_steps"] == str(max_steps) and float(params["trl.learning_rate"]) == recipe["learning_rate"]
    assert params["trl.gradient_checkpointing"] == "False" and params["trl.bf16"] == "False"
    assert "trl.output_dir" not in params and "trl.seed" not in params and "trl.hub_token" not in params
    return args


def test_select_ranks_candidates_and_says_why(cfg, selected):
    ranking = {r["name"]: r for r in selected.details["ranking"]}
    assert set(ranking) == {"small", "smaller"}
    for r in ranking.values():
        assert r["within_budget"] and math.isfinite(r["perplexity"]) and 0 <= r["generation_f1"] <= 1
    best = min(ranking.values(), key=lambda r: r["perplexity"])
    assert (
        selected.details["candidate"] == best["name"]
        or best["perplexity"] * (1 + cfg.select.tie_tolerance) >= ranking[selected.details["candidate"]]["perplexity"]
    )
    assert "lowest held-out response perplexity" in selected.details["reason"]
    run = run_of(cfg, selected.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["alignpipe.selected"] == selected.details["candidate"]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"ranking.json", "config.json", "environment.json", "result.json"} <= artifacts


def test_select_respects_the_budget(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNPIPE_HOME", str(tmp_path))
    small_only = load_config(ROOT / "configs" / "tiny.yaml", FAST + ["model.max_params=150000"])
    result = run_stage(small_only, "select", {})
    over = [r for r in result.details["ranking"] if not r["within_budget"]]
    assert [r["name"] for r in over] == ["small"] and result.details["candidate"] == "smaller"


def test_sft_trains_the_selected_model(cfg, selected, sft):
    changed = moved(weights(selected.model_path), weights(sft.model_path))
    assert changed, "SFT left every weight unchanged"
    m = sft.metrics
    assert m["global_step"] == 12 and math.isfinite(m["train_loss"]) and math.isfinite(m["eval_loss"])
    run = run_of(cfg, sft.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["sft.trl.max_steps"] == "12"
    assert_trainer_args(run, cfg.sft.trl, max_steps=12)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(history) >= 2, "per-step training loss was not logged"
    assert list((Path(sft.model_path).parent / "checkpoints").glob("checkpoint-*")), "no checkpoint kept"


def test_dpo_trains_from_sft_and_logs_rewards(cfg, sft, dpo):
    assert dpo.lineage["reference_model"] == sft.model_path
    assert moved(weights(sft.model_path), weights(dpo.model_path)), "DPO left every weight unchanged"
    run = run_of(cfg, dpo.run_id)
    assert run.info.status == "FINISHED"
    for key in ("rewards_accuracies", "rewards_margins", "eval_rewards_accuracies", "eval_rewards_margins"):
        assert key in run.data.metrics, key
    assert 0 <= run.data.metrics["eval_rewards_accuracies"] <= 1
    assert_trainer_args(run, cfg.preference.trl, max_steps=6)


def test_evaluate_scores_every_model_on_the_same_suite(cfg, selected, sft, dpo):
    paths = {"base": selected.model_path, "sft": sft.model_path, "dpo": dpo.model_path}
    result = run_stage(cfg, "evaluate", {"models": paths, "template": sft.template})
    assert set(result.metrics) == {"base", "sft", "dpo"}
    for name, m in result.metrics.items():
        assert set(HEADLINE) <= set(m), (name, m)
        for k in ("acc_seen", "acc_heldout", "pref_accuracy", "refusal_rate", "over_refusal"):
            assert 0.0 <= m[k] <= 1.0, (name, k, m[k])
        assert math.isfinite(m["heldout_loss"]) and m["heldout_loss"] > 0
    # The SFT model is the reference: its implicit DPO reward is zero by definition.
    assert result.metrics["sft"]["reward_margin"] == 0
    assert (
        "lowercase" in result.details["per_category"]["sft"] and "uppercase" in result.details["per_category"]["sft"]
    )
    # Every headline metric has a 95% interval around it, every later model a paired difference.
    for name, ks in result.details["intervals"].items():
        for k, (lo, hi) in ks.items():
            assert lo <= result.metrics[name][k] <= hi, (name, k)
    assert set(result.details["comparisons"]) == {"sft_vs_base", "dpo_vs_base", "dpo_vs_sft"}
    d = result.details["comparisons"]["dpo_vs_sft"]["acc_seen"]
    assert d["lo"] <= d["delta"] <= d["hi"] and d["verdict"] in ("better", "tied", "worse")
    run = run_of(cfg, result.run_id)
    assert run.info.status == "FINISHED"
    for key in (
        "dpo/pref_accuracy",
        "dpo/pref_accuracy_lo",
        "dpo/pref_accuracy_hi",
        "dpo_vs_sft/acc_seen_delta",
        "dpo_vs_sft/acc_seen_lo",
        "dpo_vs_sft/acc_seen_hi",
    ):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"samples.json", "evaluation.json"} <= artifacts
    env = json.loads(Path(mlflow.MlflowClient().download_artifacts(run.info.run_id, "environment.json")).read_text())
    assert env["cpu_capability"] and env["torch_threads"] >= 1 and "deterministic_algorithms" in env


def test_evaluate_is_deterministic_on_one_machine(cfg, sft, tmp_path, monkeypatch):
    """The same models scored twice on the same machine (the second time in a fresh state dir, so that
    it is not reused): identical metrics, intervals and differences."""
    inputs = {"models": {"sft": sft.model_path}, "template": sft.template}
    first = run_stage(cfg, "evaluate", inputs)
    monkeypatch.setenv("ALIGNPIPE_HOME", str(tmp_path))
    second = run_stage(load_config(ROOT / "configs" / "tiny.yaml", FAST), "evaluate", inputs)
    assert not second.reused
    assert first.metrics == second.metrics
    for part in ("intervals", "comparisons"):
        assert first.details[part] == second.details[part], part


def test_training_is_deterministic_on_one_machine(selected, sft, tmp_path, monkeypatch):
    """The same SFT job again, in a fresh state dir: bit-identical weights and the same losses."""
    monkeypatch.setenv("ALIGNPIPE_HOME", str(tmp_path))
    again = run_stage(load_config(ROOT / "configs" / "tiny.yaml", FAST), "sft", {"base": selected.model_path})
    assert not moved(weights(sft.model_path), weights(again.model_path))
    assert again.metrics["train_loss"] == sft.metrics["train_loss"]
    assert again.metrics["eval_loss"] == sft.metrics["eval_loss"]


def test_sft_with_lora_chat_template_and_packing(cfg, selected, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNPIPE_HOME", str(tmp_path))
    variant = load_config(
        ROOT / "configs" / "tiny.yaml",
        FAST
        + [
            "sft.template=chat",
            "sft.lora={r: 4, alpha: 8}",
            "sft.packing=true",
            "sft.max_length=128",
            "sft.max_steps=4",
        ],
    )
    result = run_stage(variant, "sft", {"base": selected.model_path})
    assert moved(weights(selected.model_path), weights(result.model_path)), "LoRA weights were not merged in"
    saved = Path(result.model_path)
    assert (saved / "model.safetensors").is_file() and not (saved / "adapter_config.json").exists()
    assert result.template == "chat"


def test_failed_stage_is_marked_failed_and_keeps_earlier_results(cfg, sft, tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n")
    before = (cfg.run_dir / "sft.json").read_text()
    broken = load_config(
        ROOT / "configs" / "tiny.yaml", FAST + [f"data.preference.path={bad}", "preference.max_steps=1"]
    )
    broken.state_dir = str(cfg.state_path)
    with pytest.raises(Exception):
        run_stage(broken, "preference", {"sft": "/no/such/model"})
    assert (cfg.run_dir / "sft.json").read_text() == before
    assert Path(sft.model_path, "model.safetensors").is_file()
    mlflow.set_tracking_uri(cfg.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[cfg.experiment], filter_string="attributes.run_name = 'dpo'", output_format="list"
    )
    assert any(r.info.status == "FAILED" for r in runs)


def test_sft_resumes_from_its_last_checkpoint(cfg, selected, sft):
    """A job that died after step 6 picks up checkpoint-6 when run again, instead of starting over."""
    out = Path(sft.model_path).parent
    shutil.rmtree(out / "checkpoints" / "checkpoint-12")
    shutil.rmtree(out / "model")
    result = run_stage(cfg, "sft", resolve_inputs(cfg, "sft", {}))
    run = run_of(cfg, result.run_id)
    assert run.data.tags.get("alignpipe.resumed_from", "").endswith("checkpoint-6")
    assert result.metrics["global_step"] == 12
    assert Path(result.model_path) == out / "model" and (out / "model" / "model.safetensors").is_file()
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert history and min(h.step for h in history) > 6, "steps before the checkpoint were trained again"
