"""Real public Alpaca rows from ../shared/data (never copied into the repo); skipped when absent."""

import json

import mlflow
import pytest

from conftest import ROOT, run_cli

ALPACA = ROOT.parent / "shared" / "data" / "alpaca_2k.jsonl"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ALPACA.is_file(), reason=f"{ALPACA} is absent: real-data checks skipped"),
]


def test_validate_reads_real_alpaca_rows(state_dir):
    proc = run_cli("validate", "configs/tiny.yaml", "--set", f"data.sft.path={ALPACA}")
    assert proc.returncode == 0, proc.stderr
    assert f"{ALPACA}: 2000 rows (sft)" in proc.stdout


def test_sft_stage_trains_on_real_alpaca_rows(state_dir):
    proc = run_cli("stage", "sft", "configs/tiny.yaml", "--set", f"data.sft.path={ALPACA}", "--set", "sft.max_steps=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((state_dir / "runs" / "tiny" / "sft.json").read_text())
    assert result["metrics"]["global_step"] == 5
    mlflow.set_tracking_uri(f"sqlite:///{state_dir / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train_rows"] == str(2000 - 64)  # less the held-out validation rows
