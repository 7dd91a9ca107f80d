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


def test_dpo_stage_trains_on_the_real_preference_formats_together(state_dir):
    """HH transcripts, TRL implicit-prompt messages and ShareGPT pairs in one mixture, by --set only."""
    from alignpipe.core.recipe import load_config
    from alignpipe.training import models

    shared = ALPACA.parent
    small = "{arch: llama, hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, pretrain_steps: 40}"
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"model.candidates=[{{name: small, tiny: {small}}}]"])
    base = models.resolve(cfg.model.candidates[0], cfg)
    mixture = ", ".join(
        f"{{path: {shared / f}, max_rows: 40}}"
        for f in ("hh_harmless_1k.jsonl", "oasst_pairs_messages.jsonl", "sharegpt_dpo_300.json")
    )
    proc = run_cli(
        "stage",
        "dpo",
        "configs/tiny.yaml",
        "--set",
        f"data.preference=[{mixture}]",
        "--set",
        f"preference.model_path={base}",
        "--set",
        "data.on_bad_rows=skip",
        "--set",
        "preference.max_steps=3",
        "--set",
        "preference.max_length=128",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((state_dir / "runs" / "tiny" / "dpo.json").read_text())
    assert result["metrics"]["global_step"] == 3
    mlflow.set_tracking_uri(f"sqlite:///{state_dir / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    assert run.data.params["train_pairs"] == str(120 - 64)  # 3 x 40 rows, less the validation pairs
    assert run.data.metrics["data_rows"] == 120
