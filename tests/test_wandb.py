"""W&B is opt-in (`tracking.report_to: [wandb]`): offline it logs a real SFT run; off, it never
starts a run or asks for a login; on without credentials, the config check stops before compute."""

import json
import os
import struct

import pytest

from alignpipe.core.errors import ConfigError
from alignpipe.core.recipe import load_config
from alignpipe.flows.runner import run_stage

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow

SMALL = "{arch: llama, hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, pretrain_steps: 40}"
QUICK = [f"model.candidates=[{{name: small, tiny: {SMALL}}}]", "select.perplexity_rows=8", "select.generation_rows=4"]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """The tiny model `select` picks (from the shared cache), so each test trains SFT only."""
    state = tmp_path_factory.mktemp("select-state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_HOME", str(state))
        return run_stage(load_config(ROOT / "configs" / "tiny.yaml", QUICK), "select", {}).model_path


@pytest.fixture
def no_wandb_login(tmp_path, monkeypatch):
    """A user who never ran `wandb login`: no key, no mode, an empty home (no ~/.netrc)."""
    home = tmp_path / "home"
    home.mkdir()
    for var in [v for v in os.environ if v.startswith("WANDB_")] + ["NETRC"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    return home


def sft_stage(base_model, *overrides):
    """`alignpipe stage sft` for 2 steps from the selected tiny model."""
    items = QUICK + [f"sft.model_path={base_model}", "sft.max_steps=2", "sft.logging_steps=1", *overrides]
    return run_cli("stage", "sft", "configs/tiny.yaml", *[x for item in items for x in ("--set", item)], timeout=300)


def wandb_records(path):
    """The records of a W&B run file (what `wandb sync` uploads): a ':W&B' header, then
    LevelDB-log framed protobuf `Record`s (crc32, length, type; 32 KiB blocks)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST chunk: a whole record
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def test_offline_wandb_logs_the_sft_run(base_model, state_dir, no_wandb_login, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cwd_had_wandb = (ROOT / "wandb").exists()
    done = sft_stage(base_model, "tracking.report_to=[wandb]")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((state_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under the state dir, found {runs}"
    records = list(wandb_records(next(runs[0].glob("run-*.wandb"))))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.display_name) == ("tiny", "sft")  # project = experiment, name = stage
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    losses = {h["train/global_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert sorted(losses) == [1, 2] and all(v > 0 for v in losses.values())
    assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records), "run not finished"
    assert cwd_had_wandb or not (ROOT / "wandb").exists(), "W&B files belong under the state dir, not the cwd"


def test_off_by_default_starts_no_wandb_run_and_asks_nothing(base_model, state_dir, no_wandb_login):
    cwd_had_wandb = (ROOT / "wandb").exists()
    done = sft_stage(base_model)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wandb" not in (done.stdout + done.stderr).lower()
    assert not (state_dir / "wandb").exists() and (cwd_had_wandb or not (ROOT / "wandb").exists())
    written = [p for p in no_wandb_login.rglob("*") if "wandb" in p.name.lower() or p.name == ".netrc"]
    assert written == [], "nothing W&B (settings, netrc, cache) written to the home dir"


def test_wandb_without_credentials_stops_before_compute(state_dir, no_wandb_login):
    done = run_cli(
        "stage",
        "sft",
        "configs/tiny.yaml",
        "--set",
        "tracking.report_to=[wandb]",
        "--set",
        "sft.max_steps=2",
        timeout=120,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tracking.report_to" in errors[0], done.stderr[-2000:]
    assert "export WANDB_MODE=offline" in errors[0] and "wandb login" in errors[0]
    assert not (state_dir / "runs").exists() and not (state_dir / "wandb").exists()


def test_report_to_names_are_checked_with_the_config():
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "tiny.yaml", ["tracking.report_to=[mlflow, wandbb]"])
    problems = [p for p in e.value.problems if "tracking.report_to" in p]
    assert len(problems) == 2
    assert "already logs to MLflow" in problems[0] and "did you mean 'wandb'?" in problems[1]
