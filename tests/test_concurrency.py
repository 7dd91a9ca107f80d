"""Several `alignpipe run`s at once in one home (as a scheduler or three users would start them):
each finishes, the stores are created once, and two runs of the same experiment share the work
instead of training over each other."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow

FAST = [
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=10",
    "sft.save_steps=5",
    "evaluate.max_new_tokens=8",
    "evaluate.num_samples=4",
    "formats.robustness_rows=8",
]


def test_three_runs_at_once_in_one_home(tmp_path):
    home = tmp_path / "state"
    runs = {"a1": "same", "a2": "same", "b": "other"}

    def start(experiment: str) -> subprocess.CompletedProcess:
        args = [x for item in (*FAST, f"experiment={experiment}") for x in ("--set", item)]
        env = {"ALIGNPIPE_HOME": str(home)}
        return run_cli("run", "configs/tiny.yaml", *args, "--sft-only", env=env, timeout=1500)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(runs, pool.map(start, runs.values())))
    for name, proc in done.items():
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Exception" in line]
        assert proc.returncode == 0, (name, errors[-20:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    same = mlflow.search_runs(experiment_names=["same"], output_format="list")
    parents = [r for r in same if r.info.run_name == "pipeline"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in same)
    # one of the two trained SFT, the other waited for it and reused it: one sft run, both parents point to it
    sft_runs = [r for r in same if r.info.run_name == "sft"]
    assert len(sft_runs) == 1, [r.info.run_id for r in sft_runs]
    assert {p.data.tags["alignpipe.run.sft"] for p in parents} == {sft_runs[0].info.run_id}
    both = done["a1"].stdout + done["a2"].stdout
    assert "already finished with these inputs" in both or "Cached" in both + done["a1"].stderr + done["a2"].stderr
    ids = {r.info.run_id: r for r in same}
    for parent in parents:  # each parent links a finished run of its own experiment for every stage
        for stage in ("select", "sft", "evaluate"):
            linked = ids[parent.data.tags[f"alignpipe.run.{stage}"]]
            assert linked.info.run_name == stage and linked.info.status == "FINISHED"
        children = [r for r in same if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert "compare" in {r.info.run_name for r in children}  # its own comparison (evaluate may be cached)
    other = mlflow.search_runs(experiment_names=["other"], output_format="list")
    assert {r.info.run_name for r in other} >= {"pipeline", "select", "sft", "evaluate", "compare"}
    assert all(r.info.status == "FINISHED" for r in other)
    assert client.get_registered_model("same") and client.get_registered_model("other")
    # both "same" runs gated the one SFT model: registered once, not twice
    assert len(client.search_model_versions("name = 'same'")) == 1
