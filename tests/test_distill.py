"""The `distill` stage: each mode trains a tiny student for a few steps on the CPU and its weights
move; the teacher, the teacher's answers and the student land in MLflow as the run's lineage; bad
teacher/student pairs stop before any weights load."""

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from alignpipe.core.config import DISTILL_LABELS
from alignpipe.core.recipe import load_config
from alignpipe.flows import runner
from alignpipe.flows.runner import run_stage
from alignpipe.stages.distill import check_pair
from alignpipe.training import models
from alignpipe.training.models import ModelSourceError

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

# The recipe's own candidates: tiny-llama (2.2M parameters) teaches tiny-qwen (0.4M). Smaller
# test models answer nothing after a few SFT steps, and a teacher must answer.
FAST = [
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=30",
    "sft.save_steps=15",
    "sft.logging_steps=4",
    "preference.max_steps=4",
    "preference.save_steps=2",
    "evaluate.max_new_tokens=8",
    "evaluate.num_samples=6",
    "formats.robustness_rows=8",
    "distill.enabled=true",
    "distill.student=tiny-qwen",
    "distill.max_new_tokens=8",
    "distill.logits.max_steps=4",
    "distill.logits.save_steps=2",
    "distill.logits.logging_steps=2",
]


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_HOME", str(d))
        yield d


def _cfg(*extra):
    return load_config(ROOT / "configs" / "tiny.yaml", [*FAST, *extra])


@pytest.fixture(scope="module")
def teacher(state):
    cfg = _cfg()
    return run_stage(cfg, "sft", {"base": models.named_source(cfg, "tiny-llama")}).model_path


@pytest.fixture(scope="module")
def student(state):
    return models.named_source(_cfg(), "tiny-qwen")


def _weights(path):
    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(path).state_dict().items()}


def _moved(before, after_path):
    after = _weights(after_path)
    return sum(not torch.equal(before[k], after[k]) for k in before), len(before)


def test_sequence_mode_trains_the_student_on_the_teachers_answers(state, teacher, student):
    cfg = _cfg("distill.mode=sequence", "distill.sequence={max_steps: 6, save_steps: 3}")
    result = run_stage(cfg, "distill", {"teacher": teacher, "student": student, "template": "alpaca"})
    moved, total = _moved(_weights(student), result.model_path)
    assert moved == total, f"only {moved}/{total} student tensors changed"
    assert result.details["parameter_ratio"] < 1 and result.details["mode"] == "sequence"
    rows = [json.loads(line) for line in Path(result.data_path).read_text().splitlines()]
    assert rows and all(r["teacher"] == teacher and len(r["prompt_id"]) == 64 for r in rows)  # provenance
    assert {"instruction", "input", "output", "category"} <= set(rows[0])
    # lineage: the teacher and the student as model inputs, the answers as a dataset, the student as output
    mlflow.set_tracking_uri(cfg.tracking_uri)
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["alignpipe.stage"] == "distill"
    client = mlflow.MlflowClient()
    teacher_id = run.data.tags["alignpipe.input_model.teacher"]
    assert client.get_logged_model(teacher_id).tags["alignpipe.model_path"] == teacher
    assert client.get_logged_model(teacher_id).source_run_id != result.run_id  # the sft run's own model
    answers = [d for d in run.inputs.dataset_inputs if d.tags[0].value == "teacher_answers"]
    assert answers and answers[0].dataset.name == "teacher_answers.jsonl" and answers[0].dataset.digest
    outputs = [m.model_id for m in run.outputs.model_outputs]
    assert client.get_logged_model(outputs[0]).tags["alignpipe.model_path"] == result.model_path
    assert int(run.data.params["teacher_answers"]) == len(rows)


@pytest.mark.parametrize("lmbda,trainer", [("1.0", "DistillationConfig"), ("0.5", "GKDConfig")])
def test_logits_mode_trains_the_student_on_the_teachers_distributions(state, teacher, student, lmbda, trainer):
    cfg = _cfg("distill.mode=logits", "distill.start=base", f"distill.lmbda={lmbda}")
    result = run_stage(cfg, "distill", {"teacher": teacher, "student": student, "template": "alpaca"})
    moved, total = _moved(_weights(student), result.model_path)
    assert moved == total, f"only {moved}/{total} student tensors changed"
    mlflow.set_tracking_uri(cfg.tracking_uri)
    run = mlflow.get_run(result.run_id)
    assert run.data.params["trainer"] == trainer and run.data.params["mode"] == "logits"
    assert result.metrics["global_step"] == 4 and result.data_path is None


def test_a_student_cut_to_the_teachers_first_layers_trains_sft_only_and_distilled(state, teacher):
    """`distill.student: {from: tiny-llama, layers: 2}`: student_sft and distill both train the first
    2 of tiny-llama's 4 layers (a few steps each); a different k is a different stage identity."""
    short = ["sft.max_steps=4", "sft.save_steps=2", "distill.mode=sequence", "data.sft.max_rows=64"]
    cfg = _cfg(*short, "distill.student={from: tiny-llama, layers: 2}")
    upstream = {"teacher": teacher, "template": "alpaca"}  # no earlier results: the rest comes off the recipe

    def inputs(c, stage):
        return runner.resolve(c, stage, lambda name, soft: None, upstream if stage == "distill" else None)

    base = inputs(cfg, "student_sft")["base"]
    assert json.loads((Path(base) / "student.json").read_text())["layers"] == 2
    twin = run_stage(cfg, "student_sft", inputs(cfg, "student_sft"))
    assert inputs(cfg, "distill")["student"] == base == twin.lineage["base_model"]
    result = run_stage(cfg, "distill", inputs(cfg, "distill"))
    assert result.lineage["student_model"] == base
    assert result.details["student_parameters"] < result.details["teacher_parameters"]
    for path in (base, twin.model_path, result.model_path):
        assert AutoConfig.from_pretrained(path).num_hidden_layers == 2
    three = _cfg(*short, "distill.student={from: tiny-llama, layers: 3}")
    for stage in ("student_sft", "distill"):
        assert runner.identity(cfg, stage, inputs(cfg, stage)) != runner.identity(three, stage, inputs(three, stage))


def test_a_different_tokenizer_in_logits_mode_says_what_to_do(state, teacher, tmp_path):
    other = tmp_path / "other-tokenizer"
    shutil.copytree(teacher, other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["zzzz"] = len(vocab["model"]["vocab"]) + 10
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    cfg = _cfg("distill.mode=logits")
    with pytest.raises(ModelSourceError, match=r"different tokenizers: set distill.mode=sequence"):
        check_pair(cfg, teacher, str(other), "alpaca")
    check_pair(_cfg("distill.mode=sequence"), teacher, str(other), "alpaca")  # text needs no shared tokenizer


def test_a_missing_teacher_a_missing_chat_template_and_a_larger_student(state, teacher, student, tmp_path, capsys):
    cfg = _cfg()
    with pytest.raises(ModelSourceError, match=r"distill.teacher: no-such-org/no-such-model: cannot load model"):
        check_pair(cfg, "no-such-org/no-such-model", student, "alpaca")
    plain = tmp_path / "no-chat-template"
    shutil.copytree(teacher, plain)
    (plain / "chat_template.jinja").unlink()
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match=r"has no chat template but sft.template is chat; set sft.template"):
        check_pair(cfg, str(plain), student, "chat")
    sizes = check_pair(cfg, student, teacher, "alpaca")  # swapped: the student is the larger
    assert sizes["parameter_ratio"] > 1
    assert "warning: the student" in capsys.readouterr().out


def test_bad_distill_settings_are_reported_together_before_any_compute(tmp_path):
    proc = run_cli(
        "validate",
        "configs/tiny.yaml",
        "--set",
        "distill.enabled=true",
        "--set",
        "distill.teacher=./no-such-dir",
        "--set",
        "distill.student=no-such-candidate",
        "--set",
        "distill.mode=logit",
        "--set",
        "distill.logits.bogus=1",
        "--set",
        "promote.candidate=student",
        env={"ALIGNPIPE_HOME": str(tmp_path)},
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = proc.stderr.strip().splitlines()
    assert all(line.startswith("error: configs/tiny.yaml: ") for line in errors)
    joined = "\n".join(errors)
    for fragment in (
        "'distill.teacher' model directory ./no-such-dir does not exist",
        "'distill.student' 'no-such-candidate' is not a model.candidates name (tiny-llama, tiny-qwen)",
        "'distill.mode' must be one of sequence, logits, got 'logit'",
        "'distill.logits.bogus' is not a field of trl.DistillationConfig",
        "'promote.candidate' must be one of final",
    ):
        assert fragment in joined, joined


def test_the_flow_with_distillation_compares_teacher_and_both_students(tmp_path, state):
    """`alignpipe run ... --set distill.enabled=true` end to end: the flow trains the student twice,
    evaluate scores teacher and both students, compare shows them, the gate can promote the student."""
    state = tmp_path / "state"
    llama = models.named_source(_cfg(), "tiny-llama")  # the teacher's base, whichever `select` would pick
    gate = [
        f"sft.model_path={llama}",
        "promote.candidate=student_distill",
        "promote.baseline=student_sft",
        "promote.tolerance=1.0",
    ]
    args = [x for item in (*FAST, *gate) for x in ("--set", item)]
    proc = run_cli("run", "configs/tiny.yaml", *args, "--sft-only", env={"ALIGNPIPE_HOME": str(state)}, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "distill (sequence): student " in out and "student_distill vs student_sft: " in out
    comparison = out[out.index("Comparison from MLflow") :].splitlines()
    head = comparison[1]
    for label in ("teacher", "student sft-only", "student distilled", "student distilled vs student sft-only"):
        assert label in head, head
    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    everything = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert all(r.info.status == "FINISHED" for r in everything)
    runs = {r.info.run_name: r for r in everything if "alignpipe.role" not in r.data.tags}
    assert {"sft", "student_sft", "distill", "evaluate", "compare", "pipeline"} == set(runs)
    per_model = {r.data.tags["alignpipe.role"] for r in everything if "alignpipe.role" in r.data.tags}
    labels = {k.split("/")[0] for k in runs["evaluate"].data.metrics if "/" in k and "_vs_" not in k.split("/")[0]}
    assert per_model == labels and set(DISTILL_LABELS) <= per_model  # one evaluation run per scored label
    parent = runs["pipeline"].info.run_id
    assert runs["distill"].data.tags["mlflow.parentRunId"] == parent
    client = mlflow.MlflowClient()
    sft_model = runs["sft"].data.tags["alignpipe.output_model.sft"]
    assert runs["distill"].data.tags["alignpipe.input_model.teacher"] == sft_model  # the teacher is the SFT model
    distilled = runs["distill"].data.tags["alignpipe.output_model.distill"]
    metrics = runs["evaluate"].data.metrics
    for label in ("teacher", "student_sft", "student_distill"):
        assert f"{label}/acc_seen_lo" in metrics, sorted(metrics)[:20]
    assert metrics["teacher/acc_seen"] == metrics["sft/acc_seen"]  # one model, scored once
    gate_json = json.loads(Path(client.download_artifacts(parent, "gate.json")).read_text())
    assert gate_json["candidate"] == "student_distill" and gate_json["baseline"] == "student_sft"
    assert gate_json["registered"]["model_id"] == distilled  # the distilled student is the registered version
    assert gate_json["passed"] is True and "champion" in client.get_registered_model("tiny").aliases
