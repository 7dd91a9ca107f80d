"""The registry's graph: which stages a recipe runs, where each input comes from (in the flow and for
`alignpipe stage`), a method's locked values, and what adding a stage takes (a toy stage)."""

import json
import subprocess
import sys

import pytest

from alignpipe.core.errors import ConfigError
from alignpipe.core.files import write_json
from alignpipe.core.recipe import load_config
from alignpipe.core.registry import METHODS, STAGES
from alignpipe.core.result import StageResult
from alignpipe.flows import runner
from alignpipe.flows.pipeline import _lookup

from conftest import ROOT

TINY = ROOT / "configs" / "tiny.yaml"


def plan(*overrides, preference=True):
    return [s.name for s in runner.plan(load_config(TINY, list(overrides)), preference)]


@pytest.mark.fast
def test_the_recipe_picks_the_stages_from_the_graph():
    assert plan() == ["select", "sft", "preference", "evaluate"]
    assert plan(preference=False) == ["select", "sft", "evaluate"]
    assert plan("preference.method=ppo") == ["select", "sft", "reward", "preference", "evaluate"]
    assert plan("sft.model_path=Qwen/Qwen2.5-0.5B") == ["sft", "preference", "evaluate"]
    assert plan("distill.enabled=true") == ["select", "sft", "preference", "student_sft", "distill", "evaluate"]
    assert list(load_config(TINY).orchestration.__dataclass_fields__) == list(STAGES)  # derived, not listed


@pytest.mark.fast
def test_flow_inputs_come_from_this_runs_results_per_seed():
    cfg = load_config(TINY, ["seeds=[1, 2]", "preference.method=ppo"])
    sft = [
        StageResult("sft", "r1", model_path="/sft1", template="chat"),
        StageResult("sft", "r2", model_path="/sft2", template="chat"),
    ]
    results = {
        "select": StageResult("select", "r0", model_path="/base"),
        "sft": sft,
        "reward": [StageResult("reward", "r3", model_path="/rw1"), StageResult("reward", "r4", model_path="/rw2")],
    }
    assert runner.resolve(cfg, "sft", _lookup(results, 1)) == {"base": "/base", "generated": None}
    assert runner.resolve(cfg, "preference", _lookup(results, 1)) == {
        "sft": "/sft2",
        "template": "chat",
        "reward": "/rw2",
    }
    results["preference"] = [StageResult("ppo", "r5", model_path="/p1"), StageResult("ppo", "r6", model_path="/p2")]
    evaluate = runner.resolve(cfg, "evaluate", _lookup(results, None))
    assert evaluate["models"] == {"base": "/base", "sft": ["/sft1", "/sft2"], "ppo": ["/p1", "/p2"]}
    assert evaluate["reward"] == ["/rw1", "/rw2"] and evaluate["template"] == "chat"  # the same for every seed
    dpo = load_config(TINY, ["evaluate.models=[sft]"])  # what it asks for, and the final model always
    assert list(runner.resolve(dpo, "evaluate", _lookup({**results, "reward": None}, None))["models"]) == [
        "sft",
        "dpo",
    ]


@pytest.mark.fast
def test_recipe_values_win_over_upstream_results():
    cfg = load_config(TINY, ["preference.model_path=org/policy", "reward.model_path=org/reward"])
    results = {"sft": StageResult("sft", "r1", model_path="/sft", template="chat")}
    assert runner.resolve(cfg, "reward", _lookup(results, None)) == {"sft": "org/reward", "template": "chat"}
    assert runner.resolve(cfg, "dpo", _lookup(results, None))["sft"] == "org/policy"


@pytest.mark.fast
def test_alignpipe_stage_reads_earlier_results_and_runs_nothing_found(state_dir):
    """`alignpipe stage dpo` after an SFT run: its inputs come from that run's result file."""
    cfg = load_config(TINY)
    write_json(cfg.run_dir / "sft.json", StageResult("sft", "r1", model_path="/sft", template="chat").to_dict())
    assert runner.resolve_inputs(cfg, "dpo", {}) == {"sft": "/sft", "template": "chat"}
    assert runner.resolve_inputs(cfg, "dpo", {"sft": "/given"}) == {"sft": "/given", "template": "chat"}
    models = runner.resolve_inputs(cfg, "evaluate", {})["models"]
    assert models == {"sft": "/sft"}  # no base result, no preference result: the SFT model alone


@pytest.mark.fast
def test_a_locked_value_cannot_be_overridden():
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["preference.method=ipo", "preference.loss_type=sigmoid"])
    (line,) = [p for p in e.value.problems if "loss_type" in p]
    assert "preference.method=ipo locks it to 'ipo'" in line and "use preference.method=dpo" in line
    with pytest.raises(ConfigError) as e:
        load_config(TINY, ["preference.method=simpo", "preference.loss_type=sigmoid"])
    assert any("preference.method=simpo locks it to 'simpo'" in p for p in e.value.problems)
    assert load_config(TINY, ["preference.method=ipo", "preference.loss_type=ipo"]).preference.method == "ipo"
    assert load_config(TINY, ["preference.method=simpo", "preference.cpo_alpha=0.5"])  # a default: may change


@pytest.mark.fast
def test_ipo_trains_dpos_trainer_with_its_locked_loss():
    from alignpipe.core import trl_api

    cfg = load_config(TINY, ["preference.method=ipo"])
    method = METHODS["ipo"]
    args = trl_api.make_config(
        method.trl_kind, "/tmp/x", cfg.preference.trl, ours={**method.defaults, **method.locked}
    )
    assert type(args).__name__ == "DPOConfig" and args.loss_type in ("ipo", ["ipo"]) and args.max_steps == 120


TOY = """
import dataclasses, json, sys
from pathlib import Path
from alignpipe.core import registry
from alignpipe.core.registry import Input, Stage, StagePolicy

toy = Stage("toy", "toy_stage:run_toy", ("model", "seed"), inputs=(Input("model", ("sft.model_path",)),),
            policy=StagePolicy(retries=2))
stages = list(registry.STAGES.values())
at = [s.name for s in stages].index("sft") + 1
registry.STAGES.clear()
registry.STAGES.update({s.name: s for s in [*stages[:at], toy, *stages[at:]]})

from alignpipe.cli import main
from alignpipe.core.files import write_json
from alignpipe.core.recipe import load_config
from alignpipe.core.result import StageResult
from alignpipe.flows import runner

cfg = load_config("configs/tiny.yaml", ["orchestration.toy.timeout_seconds=60"])
model = Path(sys.argv[1])
write_json(cfg.run_dir / "sft.json", StageResult("sft", None, model_path=str(model)).to_dict())
policy = dataclasses.asdict(runner.policy(cfg, "toy"))
print(json.dumps({"plan": [s.name for s in runner.plan(cfg)], "policy": policy}))
sys.exit(main(["stage", "toy", "configs/tiny.yaml"]) + main(["stage", "toy", "configs/tiny.yaml"]))
"""


@pytest.mark.slow  # a fresh interpreter and MLflow store: ~20 s
def test_a_stage_is_one_module_and_one_registry_entry(state_dir, tmp_path):
    """A toy stage (tests/toy_stage.py) added to the registry alone: the recipe's orchestration has its
    policy, the flow's plan runs it after sft, `alignpipe stage toy` finds its input in the earlier SFT
    result, runs it in an MLflow run, and reuses it the second time, naming the identity."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    env = {"PYTHONPATH": str(ROOT / "tests"), "ALIGNPIPE_HOME": str(state_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", TOY, str(model)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout.splitlines()[0])
    assert shown["plan"] == ["select", "sft", "toy", "preference", "evaluate"]
    assert shown["policy"] == {"retries": 2, "retry_delay_seconds": 30, "timeout_seconds": 60}
    (folder,) = (state_dir / "runs").glob("*/toy-*")
    result = StageResult.read(folder / "result.json")
    assert result.metrics == {"files": 1} and result.lineage == {"counted_model": str(model)}
    assert f"toy: finished earlier as {folder.name} (MLflow run {result.run_id}); reusing it" in proc.stdout
