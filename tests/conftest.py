"""Shared fixtures: a persistent tiny-model cache, a per-test state dir, and a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_ALIGNPIPE = ROOT / ".venv" / "bin" / "alignpipe"


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
