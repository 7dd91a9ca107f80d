"""Self-Instruct: the paper's ROUGE-L < 0.7 rule and filters, then a real (tiny) generator run that
lands one MLflow run and a dataset with provenance, which SFT then trains on as one more source."""

import json
from pathlib import Path

import mlflow
import pytest

from alignpipe.core.recipe import load_config
from alignpipe.flows.runner import run_stage
from alignpipe.stages import self_instruct as si
from alignpipe.training import models

from conftest import ROOT, SMALL_CANDIDATE


@pytest.mark.fast
def test_rouge_l_matches_the_lcs_f_measure():
    assert si.rouge_l("Write a poem about the sea.", "write a POEM about the sea") == 1.0
    assert si.rouge_l("Sort these numbers.", "Translate to French.") == 0.0
    # LCS "a poem about" = 3 of 5 and 3 of 4 tokens -> F = 2 * 0.6 * 0.75 / 1.35
    assert si.rouge_l("write a poem about cats", "a poem about dogs") == pytest.approx(2 * 0.6 * 0.75 / 1.35)


@pytest.mark.fast
def test_filters_keep_novel_tasks_and_drop_near_copies_bad_formats_and_lengths():
    assert si.instruction_problem("Hi there", 3, 150) == "length"
    assert si.instruction_problem("Draw a picture of a cat.", 3, 150) == "format"
    assert si.instruction_problem("Write a program that sorts a list.", 3, 150) == "format"
    assert si.instruction_problem("- Give three tips for sleeping well.", 3, 150) == "format"
    assert si.instruction_problem("Give three tips for sleeping well.", 3, 150) is None
    pool = ["Give three tips for staying healthy."]
    assert max(si.rouge_l("Give three tips for staying very healthy.", p) for p in pool) >= 0.7  # a near copy: dropped
    assert max(si.rouge_l("Name the capital city of Peru.", p) for p in pool) < 0.7  # novel: kept


@pytest.mark.fast
def test_parsing_generated_lists_and_instances():
    text = " Name a fruit.\n10. Count the words in the sentence.\n11. Tell me a"
    assert si.parse_instructions(text) == ["Name a fruit.", "Count the words in the sentence.", "Tell me a"]
    assert si.parse_instructions(text, truncated=True) == ["Name a fruit.", "Count the words in the sentence."]
    assert si.parse_instance("Input: the cat\nOutput: 2\n\nTask: next") == ("the cat", "2")
    assert si.parse_instance("Paris is the capital.") == ("", "Paris is the capital.")
    prompt = si.instructions_prompt(["A.", "B."])
    assert prompt == "Come up with a series of tasks:\n1. A.\n2. B.\n3."


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("si")
    seeds = root / "seed_tasks.jsonl"
    rows = [json.loads(line) for line in (ROOT / "data" / "sft.jsonl").read_text().splitlines()]
    tasks, seen = [], set()
    for r in rows:
        if r["instruction"] not in seen:
            seen.add(r["instruction"])
            tasks.append(
                {
                    "id": f"seed_task_{len(tasks)}",
                    "name": r["category"],
                    "instruction": r["instruction"],
                    "instances": [{"input": r["input"], "output": r["output"]}],
                    "is_classification": False,
                }
            )
    seeds.write_text("".join(json.dumps(t) + "\n" for t in tasks[:24]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_HOME", str(root / "state"))
        yield load_config(
            ROOT / "configs" / "tiny.yaml",
            [
                SMALL_CANDIDATE,
                f"self_instruct.seed_tasks={seeds}",
                "self_instruct.enabled=true",
                "self_instruct.rounds=2",
                "self_instruct.prompts_per_round=6",
                "self_instruct.max_new_tokens=40",
                "self_instruct.min_words=2",
                "sft.max_steps=2",
                "sft.save_steps=2",
                "sft.logging_steps=1",
                "formats.variation=0.5",  # SFT also trains on varied formats
            ],
        )


@pytest.mark.slow
def test_self_instruct_run_writes_rows_with_provenance_and_sft_mixes_them_in(cfg):
    base = models.resolve(cfg.model.candidates[0], cfg)
    result = run_stage(cfg, "self_instruct", {"generator": base})
    m = result.metrics
    assert (
        m["proposed"]
        == m["filtered_length"] + m["filtered_format"] + m["filtered_rouge"] + m["filtered_instance"] + m["kept"]
    )
    rows = [json.loads(line) for line in open(result.data_path)]
    assert len(rows) == m["kept"]
    seeds = [json.loads(line)["instruction"] for line in open(cfg.self_instruct.seed_tasks)]
    for r in rows:
        assert r["generator"] == base and r["round"] in (1, 2) and r["seed_ids"] and r["output"].strip()
        assert max(si.rouge_l(r["instruction"], s) for s in seeds) < 0.7
    assert json.loads((cfg.run_dir / "self_instruct.json").read_text())["run_id"] == result.run_id
    mlflow.set_tracking_uri(cfg.tracking_uri)
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["kept"] == m["kept"]

    # SFT takes the generated file as one more source (here possibly empty: a tiny model writes poorly)
    generated = result.data_path
    if not rows:  # give SFT a generated file to mix in either way
        generated = str(cfg.run_dir / "generated.jsonl")
        (cfg.run_dir / "generated.jsonl").write_text(
            json.dumps(
                {
                    "instruction": "Name a red fruit.",
                    "input": "",
                    "output": "apple",
                    "category": "self_instruct",
                    "round": 1,
                }
            )
            + "\n"
        )
    sft = run_stage(cfg, "sft", {"base": base, "generated": generated})
    report = json.loads(
        Path(mlflow.artifacts.download_artifacts(run_id=sft.run_id, artifact_path="data_report.json")).read_text()
    )
    assert [s["path"] for s in report["sources"]][-1] == generated
    assert mlflow.get_run(sft.run_id).data.params["generated_data"] == generated
