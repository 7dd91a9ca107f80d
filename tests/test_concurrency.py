"""Several `alignpipe run`s at once in one home (as a scheduler or three users would start them):
each finishes, the stores are created once, and two runs of the same experiment share the work
instead of training over each other."""

import subprocess
from concurrent.futures import ThreadPoolExecutor

import mlflow
import pytest

from conftest import QUICK, check_three_runs, run_cli

pytestmark = pytest.mark.slow


def test_three_runs_at_once_in_one_home(tmp_path):
    home = tmp_path / "state"
    runs = {"a1": "same", "a2": "same", "b": "other"}

    def start(experiment: str) -> subprocess.CompletedProcess:
        args = [x for item in (*QUICK, f"experiment={experiment}") for x in ("--set", item)]
        env = {"ALIGNPIPE_HOME": str(home)}
        return run_cli("run", "configs/tiny.yaml", *args, "--sft-only", env=env, timeout=1500)

    with ThreadPoolExecutor(max_workers=3) as pool:
        done = dict(zip(runs, pool.map(start, runs.values())))
    for name, proc in done.items():
        errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Exception" in line]
        assert proc.returncode == 0, (name, errors[-20:], proc.stderr[-3000:])
        assert "Traceback" not in proc.stderr, (name, proc.stderr[-3000:])
    both = done["a1"].stdout + done["a1"].stderr + done["a2"].stdout + done["a2"].stderr
    assert "sft: finished earlier as sft-" in both  # the one reason a stage is reused: its identity
    check_three_runs(mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}"), "same", "other")
