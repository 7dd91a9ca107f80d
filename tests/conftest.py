"""Shared fixtures: a persistent tiny-model cache, a per-test state dir, and a CLI runner."""

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_ALIGNPIPE = ROOT / ".venv" / "bin" / "alignpipe"
PREFECT = ROOT / ".venv" / "bin" / "prefect"

# The small Llama the slow stage tests train (a few seconds to build), as a recipe override
SMALL = "{arch: llama, hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, pretrain_steps: 40}"
SMALL_CANDIDATE = f"model.candidates=[{{name: small, tiny: {SMALL}}}]"


TIERS = ("fast", "slow", "deepspeed")


def pytest_collection_modifyitems(config, items):
    """Every test carries exactly one tier marker (pyproject.toml: fast, slow, deepspeed): an unmarked
    one fails collection, so `make test-fast` never silently trains and no test escapes its tier."""
    wrong = [item.nodeid for item in items if len({m.name for m in item.iter_markers() if m.name in TIERS}) != 1]
    if wrong:
        raise pytest.UsageError(f"tests without exactly one tier marker ({', '.join(TIERS)}): " + ", ".join(wrong))


@pytest.fixture(scope="session", autouse=True)
def tiny_cache():
    """ALIGNPIPE_CACHE -> <repo>/.alignpipe/cache (git-ignored), so tiny models survive test runs;
    an exported ALIGNPIPE_CACHE wins (a fresh one rebuilds them, e.g. under other CPU kernels)."""
    cache = Path(os.environ.get("ALIGNPIPE_CACHE") or ROOT / ".alignpipe" / "cache")
    cache.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIGNPIPE_CACHE", str(cache))
        yield cache


_USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def _restore_tracking_env() -> None:
    if _USER_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = _USER_TRACKING_URI


@pytest.fixture(autouse=True)
def keep_tracking_env():
    """`mlflow.set_tracking_uri` (in a test or a module fixture) also exports $MLFLOW_TRACKING_URI;
    reset it around every test, or later CLI runs and configs would log to that test's store."""
    _restore_tracking_env()
    yield
    _restore_tracking_env()


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """A fresh ALIGNPIPE_HOME for this test."""
    d = tmp_path / "state"
    d.mkdir()
    monkeypatch.setenv("ALIGNPIPE_HOME", str(d))
    return d


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Run the `alignpipe` CLI from the repo root; `env` adds to (not replaces) os.environ."""
    cmd = [str(_ALIGNPIPE)] if _ALIGNPIPE.exists() else [sys.executable, "-m", "alignpipe.cli"]
    return subprocess.run(
        cmd + [str(a) for a in args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_in_process(*args, env=None) -> subprocess.CompletedProcess:
    """`alignpipe ARGS` in this process, for commands that stop before any compute (validate, bad
    input): the same exit code, stdout and stderr as `run_cli` (an escaping exception prints its
    traceback and exits 1, as the interpreter would), without a new interpreter's seconds of imports.
    The environment and signal handlers the command sets are restored."""
    from alignpipe.cli import main

    saved_env, saved_signals = dict(os.environ), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for s, handler in saved_signals.items():
            signal.signal(s, handler)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def deployment_run(servers: dict, name: str, overrides: list[str]) -> tuple[subprocess.CompletedProcess, str]:
    """`prefect deployment run pipeline/NAME --params ... --watch`, as a user types it, against
    `servers["env"]` (PREFECT_API_URL, MLFLOW_TRACKING_URI); returns the process and the flow run id."""
    params = json.dumps({"overrides": overrides})
    proc = subprocess.run(
        [str(PREFECT), "deployment", "run", f"pipeline/{name}", "--params", params, "--watch"],
        cwd=ROOT,
        env={**os.environ, **servers["env"]},
        capture_output=True,
        text=True,
        timeout=900,
    )
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout)
    return proc, found.group(1) if found else ""


# a whole SFT-only pipeline in about a minute: what the concurrency tests run three of at once
QUICK = [
    "select.perplexity_rows=16",
    "select.generation_rows=8",
    "sft.max_steps=10",
    "sft.save_steps=5",
    "evaluate.max_new_tokens=8",
    "evaluate.num_samples=4",
    "formats.robustness_rows=8",
]


def check_three_runs(client, same: str, other: str) -> None:
    """Two pipeline runs of experiment `same` and one of `other`, run at once in one home: all
    finished; `same` trained SFT once (the other run waited and reused it) and registered its model
    once; each parent links a finished run of its own experiment for every stage and has its own
    comparison; `other` ran every stage itself."""
    same_id, other_id = (client.get_experiment_by_name(name).experiment_id for name in (same, other))
    runs = client.search_runs([same_id], max_results=500)
    parents = [r for r in runs if r.info.run_name == "pipeline"]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in runs)
    sft_runs = [r for r in runs if r.info.run_name == "sft"]
    assert len(sft_runs) == 1, [r.info.run_id for r in sft_runs]
    assert {p.data.tags["alignpipe.run.sft"] for p in parents} == {sft_runs[0].info.run_id}
    ids = {r.info.run_id: r for r in runs}
    for parent in parents:
        for stage in ("select", "sft", "evaluate"):
            linked = ids[parent.data.tags[f"alignpipe.run.{stage}"]]
            assert linked.info.run_name == stage and linked.info.status == "FINISHED"
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert "compare" in {r.info.run_name for r in children}  # its own comparison (evaluate may be cached)
    others = client.search_runs([other_id], max_results=500)
    assert {r.info.run_name for r in others} >= {"pipeline", "select", "sft", "evaluate", "compare"}
    assert all(r.info.status == "FINISHED" for r in others)
    assert client.get_registered_model(same) and client.get_registered_model(other)
    assert len(client.search_model_versions(f"name = '{same}'")) == 1  # the one SFT model, gated twice
