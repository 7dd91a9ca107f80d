"""The pipeline's tracking on a real PostgreSQL: a private cluster started on 127.0.0.1 by the test,
`tracking.uri=postgresql+psycopg2://...`, a real stage, checked through MLflow and in the database."""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

SMALL = "{arch: llama, hidden_size: 64, num_layers: 2, num_heads: 4, num_kv_heads: 2, pretrain_steps: 40}"
QUICK = [f"model.candidates=[{{name: small, tiny: {SMALL}}}]", "select.perplexity_rows=8", "select.generation_rows=4"]


def _pg_bin() -> Path | None:
    """The PostgreSQL server binaries (PATH first, then the Debian/Ubuntu layout, newest first)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
    )
    return Path(dirs[-1]) if dirs else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free loopback port, trust auth for user `alignpipe`;
    yields a URI builder `url(dbname)`. initdb refuses root, so as root the cluster runs as the
    `postgres` (or `nobody`) user. Stopped with `pg_ctl stop -m fast` and deleted afterwards."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed (it is in pyproject.toml's dependencies)")
    bindir = _pg_bin()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql to run this test")
    user = None
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            try:
                user = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if user is None:
            pytest.skip("running as root and no unprivileged user (postgres, nobody) to own the cluster")
    root = Path(tempfile.mkdtemp(prefix="alignpipe-pg-"))
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    as_owner = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data, port = root / "data", _free_port()

    def pg(*args):
        return subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=root,
            **as_owner,
        )

    pg("initdb", "-D", str(data), "-U", "alignpipe", "-A", "trust", "--no-sync", "-E", "UTF8")
    pg(
        "pg_ctl",
        "-D",
        str(data),
        "-l",
        str(root / "server.log"),
        "-w",
        "-t",
        "60",
        "start",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
    )
    try:
        yield lambda db: f"postgresql+psycopg2://alignpipe@127.0.0.1:{port}/{db}"
    finally:
        pg("pg_ctl", "-D", str(data), "stop", "-m", "fast", "-w")
        shutil.rmtree(root, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2", "postgresql").rsplit("/", 1)[0] + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return url.rsplit("/", 1)[0] + f"/{name}"


def test_stage_tracked_in_postgresql(postgres, state_dir):
    uri = create_database(postgres("postgres"), "mlflow_select")
    done = run_cli(
        "stage",
        "select",
        "configs/tiny.yaml",
        *[x for s in QUICK + [f"tracking.uri={uri}"] for x in ("--set", s)],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"MLflow: {uri}" in done.stdout
    assert not (state_dir / "mlflow.db").exists(), "the sqlite default must not be used when tracking.uri is set"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    assert exp is not None
    assert exp.artifact_location == (state_dir / "mlartifacts" / "tiny").as_uri(), "artifacts go under the state dir"
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "select"
    assert run.data.params["seed"] == "42" and "select.perplexity_rows" in run.data.params
    assert run.data.metrics["small.perplexity"] > 1 and run.data.metrics["wall_seconds"] > 0
    assert run.data.tags["alignpipe.selected"] == "small"
    logged = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "environment.json", "ranking.json", "result.json"} <= logged
    local = Path(client.download_artifacts(run.info.run_id, "result.json", str(state_dir / "dl")))
    assert '"stage": "select"' in local.read_text()
    assert (state_dir / "mlartifacts" / "tiny" / run.info.run_id / "artifacts" / "ranking.json").is_file()
    assert not (ROOT / "mlruns").exists()

    import psycopg2  # the rows really are in PostgreSQL

    with psycopg2.connect(uri.replace("postgresql+psycopg2", "postgresql")) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, name FROM runs WHERE run_uuid = %s", (run.info.run_id,))
        assert cur.fetchone() == ("FINISHED", "select")
