"""The flow's pieces that need no server: stage identities, the deployments and their schedule, the gate."""

import pytest

from alignpipe.core.errors import ConfigError
from alignpipe.core.recipe import load_config
from alignpipe.core.result import StageResult
from alignpipe.evaluation.promote import verdict
from alignpipe.flows.runner import identity

pytestmark = pytest.mark.fast


def _key(cfg, stage, inputs=None):
    return identity(cfg, stage, inputs or {})


def test_identities_follow_only_what_each_stage_depends_on(tmp_path):
    cfg = load_config("configs/tiny.yaml")
    keys = {s: _key(cfg, s) for s in ("select", "sft", "preference", "evaluate")}
    assert keys == {s: _key(load_config("configs/tiny.yaml"), s) for s in keys}  # deterministic
    changed = load_config("configs/tiny.yaml", ["evaluate.max_new_tokens=8"])
    assert _key(changed, "evaluate") != keys["evaluate"]
    assert all(_key(changed, s) == keys[s] for s in ("select", "sft", "preference"))
    lr = load_config("configs/tiny.yaml", ["sft.learning_rate=1e-4"])
    assert _key(lr, "sft") != keys["sft"] and _key(lr, "preference") == keys["preference"]
    varied = load_config("configs/tiny.yaml", ["formats.variation=0.3"])
    assert _key(varied, "sft") != keys["sft"] and _key(varied, "select") == keys["select"]
    # the parallel setup is part of a training stage's identity; the launcher and its port are not
    ranks = load_config("configs/tiny.yaml", ["distributed.num_processes=2"])
    port = load_config("configs/tiny.yaml", ["distributed.master_port=29611", "distributed.launcher=accelerate"])
    assert _key(ranks, "sft") != keys["sft"] and _key(port, "sft") == keys["sft"]


def test_identity_follows_data_content_and_upstream_model_files(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text(open("data/sft.jsonl").read())
    cfg = load_config("configs/tiny.yaml", [f"data.sft.path={data}"])
    before = _key(cfg, "sft")
    with data.open("a") as f:
        f.write('{"instruction": "Say hi.", "input": "", "output": "hi", "category": "echo"}\n')
    assert _key(cfg, "sft") != before  # same path, new content
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"1")
    k1 = _key(cfg, "preference", {"sft": str(model), "template": "alpaca"})
    (model / "model.safetensors").write_bytes(b"22")
    assert _key(cfg, "preference", {"sft": str(model), "template": "alpaca"}) != k1


def test_prefect_yaml_declares_full_and_sft_only_on_the_work_pool_with_an_inactive_retrain_schedule():
    """What `prefect deploy --all` reads: both deployments of the `pipeline` flow on the `alignpipe`
    pool, recipes that load, and a valid weekly cron that stays off until a user turns it on."""
    import yaml
    from prefect.client.schemas.schedules import CronSchedule

    from alignpipe.flows.pipeline import pipeline
    from alignpipe.servers import POOL

    spec = yaml.safe_load(open("prefect.yaml"))
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"full", "sft-only"}
    for d in deployments.values():
        path, name = d["entrypoint"].split(":")
        assert path == "flows/pipeline.py" and name == pipeline.fn.__name__ and pipeline.name == "pipeline"
        assert d["work_pool"]["name"] == POOL
        assert set(d["parameters"]) <= set(pipeline.parameters.properties)
        load_config(d["parameters"]["config"])
    assert deployments["full"]["parameters"]["preference"] is True
    assert deployments["sft-only"]["parameters"]["preference"] is False
    (schedule,) = deployments["full"]["schedules"]
    assert CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"]) and schedule["active"] is False
    assert not deployments["sft-only"].get("schedules")


def test_bad_orchestration_values_are_reported_together():
    with pytest.raises(ConfigError) as e:
        load_config(
            "configs/tiny.yaml",
            ["orchestration.retrain_cron=0 3 * * 0", "orchestration.sft.retries=-1", "promote.tolerance=-0.1"],
        )
    text = "\n".join(e.value.problems)
    assert "unknown key 'orchestration.retrain_cron': the retrain schedule is in prefect.yaml" in text
    assert "'orchestration.sft.retries' must be >= 0" in text and "'promote.tolerance' must be >= 0" in text


def test_gate_respects_metric_direction_and_tolerance():
    """The gate reads the paired differences' intervals (tests/test_stats.py covers the rule in depth)."""
    cfg = load_config("configs/tiny.yaml", ["promote.metrics=[acc_seen,over_refusal]", "promote.tolerance=0"])
    metrics = {"sft": {"acc_seen": 0.30, "over_refusal": 0.02}, "dpo": {"acc_seen": 0.33, "over_refusal": 0.03}}
    diffs = {
        "acc_seen": {"delta": 0.03, "lo": 0.01, "hi": 0.05, "direction": 1, "verdict": "better"},
        "over_refusal": {"delta": 0.01, "lo": -0.005, "hi": 0.015, "direction": -1, "verdict": "tied"},
    }
    evaluation = StageResult("evaluate", None, metrics, details={"comparisons": {"dpo_vs_sft": diffs}, "seeds": [42]})
    v = verdict(cfg, "dpo", evaluation)
    assert not v["passed"] and [c["passed"] for c in v["checks"]] == [True, False]  # over_refusal: lower is better
    cfg = load_config("configs/tiny.yaml", ["promote.metrics=[acc_seen,over_refusal]", "promote.tolerance=0.02"])
    assert verdict(cfg, "dpo", evaluation)["passed"]
    cfg = load_config("configs/tiny.yaml", ["promote.metrics=[no_such_metric]"])
    assert verdict(cfg, "dpo", evaluation)["checks"][0]["why"] == "not measured"
    only_sft = StageResult(
        "evaluate", None, {"base": {"acc_seen": 0.01}, "sft": {"acc_seen": 0.3}}, details={"comparisons": {}}
    )
    assert (
        verdict(load_config("configs/tiny.yaml", ["promote.metrics=[acc_seen]"]), "sft", only_sft)["baseline"]
        == "base"
    )


def test_a_given_sft_model_runs_nothing_upstream(state_dir):
    """`alignpipe stage dpo --input sft=PATH` (or reward): the given model, the recipe's template, and
    no select or SFT run first to find out the template."""
    from alignpipe.flows.runner import resolve_inputs

    cfg = load_config("configs/tiny.yaml")
    assert resolve_inputs(cfg, "dpo", {"sft": "/models/sft"}) == {"sft": "/models/sft", "template": None}
    assert resolve_inputs(cfg, "reward", {"sft": "/models/sft"}) == {"sft": "/models/sft", "template": None}
    assert not (state_dir / "runs").exists()
