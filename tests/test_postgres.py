"""The pipeline on a real PostgreSQL: a private cluster started on 127.0.0.1 by the test. A stage with
`tracking.uri=postgresql+psycopg2://...`; and `alignpipe up --database` with a second worker sharing
the state, as two machines would. Checked through MLflow, Prefect and in the databases."""

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest

from conftest import QUICK as QUICK_PIPELINE
from conftest import ROOT, SMALL_CANDIDATE, deployment_run, run_cli

pytestmark = pytest.mark.slow  # a private PostgreSQL cluster

QUICK = [SMALL_CANDIDATE, "select.perplexity_rows=8", "select.generation_rows=4"]


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


def _shared_servers_query(url: str, sql: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


@pytest.mark.slow
def _stop_idle_worker(worker: subprocess.Popen, log: Path) -> None:
    """Stop a worker as a user would (SIGTERM); one that does not stop within 60 s is killed and fails
    the test (with SIGINT ignored, as in a script's background job, Prefect's worker never stopped)."""
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        pytest.fail("node-2 did not stop within 60 s of SIGTERM:\n" + log.read_text()[-3000:])


def test_two_workers_on_shared_postgresql_state(postgres, tmp_path):
    """Two machines' worth of the pipeline on one box: `alignpipe up --database` keeps Prefect's and
    MLflow's databases in PostgreSQL, and a second `alignpipe worker` (another node: its own process,
    the same shared state dir and servers) takes runs from the same pool. Two runs at once, one
    worker each (limit 1): both complete, one on each worker; the flow runs and MLflow runs are rows
    in PostgreSQL, the artifacts come back through the MLflow server, Prefect's results are in the
    shared state dir."""
    from mlflow.tracking import MlflowClient

    server = postgres("postgres").replace("postgresql+psycopg2", "postgresql").rsplit("/", 1)[0]
    home, pp, mp = tmp_path / "state", _free_port(), _free_port()
    up = run_cli("up", "--home", home, "--database", server, "--prefect-port", pp, "--mlflow-port", mp, "--runs", 1)
    worker = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr + (home / "logs" / "deploy.log").read_text()
        env = {"PREFECT_API_URL": f"http://127.0.0.1:{pp}/api", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mp}"}
        log = open(tmp_path / "node-2.log", "w")
        worker = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "alignpipe"), "worker", "--home", str(home), "--runs", "1"]
            + ["--prefect", env["PREFECT_API_URL"], "--mlflow", env["MLFLOW_TRACKING_URI"], "--name", "node-2"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # as `alignpipe worker ... &` from a script: SIGINT ignored; it must still stop on SIGTERM
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        runs = {"a": "pg-a", "b": "pg-b"}
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = dict(
                zip(
                    runs,
                    pool.map(
                        lambda e: deployment_run({"env": env}, "sft-only", [*QUICK_PIPELINE, f"experiment={e}"]),
                        runs.values(),
                    ),
                )
            )
        spans, ids = [], []
        for name, (proc, flow_run_id) in done.items():
            assert proc.returncode == 0 and "Completed" in proc.stdout, (
                name,
                proc.stdout[-3000:] + proc.stderr[-3000:],
            )
            with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/flow_runs/{flow_run_id}") as r:
                run = json.load(r)
            spans.append((datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"])))
            ids.append(flow_run_id)
        # each worker runs one at a time, so two runs overlapping means both workers took one
        (s1, e1), (s2, e2) = spans
        assert s1 < e2 and s2 < e1, spans
        # both workers try to claim each run; the one that loses logs "Aborted submission"
        node2 = (tmp_path / "node-2.log").read_text()
        assert node2.count("submitted to infrastructure") == 1, node2[-3000:]

        prefect_db = server + "/prefect"
        rows = _shared_servers_query(prefect_db, "SELECT id::text, state_type FROM flow_run")
        assert {i: "COMPLETED" for i in ids}.items() <= dict(rows).items()
        client = MlflowClient(env["MLFLOW_TRACKING_URI"])
        for experiment in runs.values():
            exp = client.get_experiment_by_name(experiment)
            assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts must go through the server"
            (parent,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'pipeline'")
            assert parent.info.status == "FINISHED"
            assert _shared_servers_query(
                server + "/mlflow", f"SELECT status FROM runs WHERE run_uuid = '{parent.info.run_id}'"
            ) == [("FINISHED",)]
            gate = Path(client.download_artifacts(parent.info.run_id, "gate.json", str(tmp_path)))
            assert json.loads(gate.read_text())["candidate"] == "sft"
        assert not (home / "mlflow.db").exists() and not (home / "prefect" / "prefect.db").exists()
        assert any((home / "mlartifacts").rglob("gate.json")), "the server keeps the artifacts in the state dir"
        finished = list((home / "runs").glob("*/sft-*/result.json"))  # what any worker reuses: the stage folders
        assert len(finished) == 2, "each experiment's finished SFT stage is in the shared state dir"
    finally:
        try:
            if worker is not None:
                _stop_idle_worker(worker, tmp_path / "node-2.log")
        finally:
            down = run_cli("down", "--home", home, timeout=120)
            assert down.returncode == 0, down.stderr
