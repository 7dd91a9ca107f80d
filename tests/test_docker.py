"""docker/: no Docker engine runs here, so check what can be checked without one: the compose
file's services, images, ports, env, volumes and health-gated start order; that every command
names a real entry point with options its CLI accepts; the Dockerfile's sources and entry
point; and the PostgreSQL init script, run for real on a private cluster."""

import importlib
import importlib.metadata
import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import tomllib
import yaml

from alignpipe.core.recipe import load_config

from conftest import ROOT
from test_postgres import postgres  # noqa: F401  (the private PostgreSQL cluster fixture)

DOCKER = ROOT / "docker"
SERVICES = {"postgres", "prefect-server", "mlflow", "pipeline"}


def interpolate(value):
    """Compose's `${VAR:-default}` with nothing set: the defaults a plain `up` uses."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose():
    return interpolate(yaml.safe_load((DOCKER / "compose.yaml").read_text()))


def argv(value) -> list[str]:
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def env(service) -> dict[str, str]:
    e = service.get("environment") or {}
    return dict(item.split("=", 1) for item in e) if isinstance(e, list) else {k: str(v) for k, v in e.items()}


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    kept = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    text = re.sub(r"\\\n", " ", "\n".join(kept))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in text.splitlines() if ln.strip()]


def built_from(service) -> tuple[Path, Path]:
    """(build context, Dockerfile) of a service built from docker/ files."""
    build = service["build"]
    context = (DOCKER / build["context"]).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


@pytest.mark.fast
def test_four_services_with_official_images(compose):
    services = compose["services"]
    assert set(services) == SERVICES
    assert services["postgres"]["image"] == "postgres:15"
    prefect_tag = services["prefect-server"]["image"]
    assert prefect_tag.startswith("prefecthq/prefect:3.")
    server = prefect_tag.split(":")[1].split("-")[0]
    client = importlib.metadata.version("prefect")
    assert server.split(".")[:2] == client.split(".")[:2], (
        f"Prefect server {server} vs client {client}: keep them on one minor"
    )
    # MLflow: the official image, extended by a docker/ Dockerfile with the PostgreSQL driver
    _, mlflow_file = built_from(services["mlflow"])
    assert mlflow_file.parent == DOCKER and mlflow_file.is_file()
    (base,) = [args for ins, args in dockerfile(mlflow_file) if ins == "FROM"]
    assert base == f"ghcr.io/mlflow/mlflow:v{importlib.metadata.version('mlflow')}", "server image = the pinned MLflow"
    psycopg_pin = next(
        ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln.startswith("psycopg2-binary==")
    )
    assert any(ins == "RUN" and psycopg_pin in args for ins, args in dockerfile(mlflow_file))
    context, pipeline_file = built_from(services["pipeline"])
    assert context == ROOT and pipeline_file == DOCKER / "Dockerfile"


@pytest.mark.fast
def test_ports_on_loopback_only(compose):
    services = compose["services"]
    assert services["prefect-server"]["ports"] == ["127.0.0.1:4200:4200"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert "ports" not in services["postgres"] and "ports" not in services["pipeline"]


@pytest.mark.fast
def test_both_servers_use_the_postgres_service(compose):
    services = compose["services"]
    pg = env(services["postgres"])
    prefect_url = urlsplit(env(services["prefect-server"])["PREFECT_API_DATABASE_CONNECTION_URL"])
    mlflow_cmd = argv(services["mlflow"]["command"])
    mlflow_url = urlsplit(mlflow_cmd[mlflow_cmd.index("--backend-store-uri") + 1])
    for url, driver, db in (
        (prefect_url, "postgresql+asyncpg", "prefect"),
        (mlflow_url, "postgresql+psycopg2", "mlflow"),
    ):
        assert url.scheme == driver
        assert (url.hostname, url.port, url.path) == ("postgres", 5432, f"/{db}")
        assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    sql = (DOCKER / "postgres-init.sql").read_text()
    assert "CREATE DATABASE prefect" in sql and "CREATE DATABASE mlflow" in sql and "pg_trgm" in sql
    mounts = [v for v in services["postgres"]["volumes"] if isinstance(v, str) and "docker-entrypoint-initdb.d" in v]
    assert mounts and (DOCKER / mounts[0].split(":")[0]).resolve() == DOCKER / "postgres-init.sql"


@pytest.mark.fast
def test_pipeline_talks_to_both_servers(compose):
    services = compose["services"]
    e = env(services["pipeline"])
    api = urlsplit(e["PREFECT_API_URL"])
    assert (api.hostname, api.port, api.path) == ("prefect-server", 4200, "/api")
    tracking = urlsplit(e["MLFLOW_TRACKING_URI"])
    assert (tracking.scheme, tracking.hostname, tracking.port) == ("http", "mlflow", 5000)
    mlflow_cmd = argv(services["mlflow"]["command"])
    allowed = mlflow_cmd[mlflow_cmd.index("--allowed-hosts") + 1].split(",")
    assert tracking.netloc in allowed, "MLflow 3 answers 403 to a Host header it does not allow"
    assert e["ALIGNPIPE_HOME"] == "/state"


@pytest.mark.fast
def test_start_order_waits_on_health(compose):
    services = compose["services"]
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services and how == {"condition": "service_healthy"}, f"{name} -> {dep}"
            assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"
    assert set(services["pipeline"]["depends_on"]) == {"prefect-server", "mlflow"}
    assert set(services["prefect-server"]["depends_on"]) == set(services["mlflow"]["depends_on"]) == {"postgres"}
    # each healthcheck probes the port its server listens on
    for name, port in (("prefect-server", "4200"), ("mlflow", "5000")):
        assert f"127.0.0.1:{port}/" in " ".join(argv(services[name]["healthcheck"]["test"]))


@pytest.mark.fast
def test_every_volume_is_declared(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, svc in compose["services"].items():
        for v in svc.get("volumes") or []:
            source = v.split(":")[0] if isinstance(v, str) else v.get("source")
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                used.add(source)
    assert used == declared, f"used {sorted(used)}, declared {sorted(declared)}"


@pytest.mark.fast
def test_pipeline_is_a_worker_of_the_pool_prefect_yaml_deploys_to(compose):
    """The container creates the pool, runs `prefect deploy --all` in the image's copy of the repo
    (so the recorded working dir is /app) and then becomes the pool's worker."""
    from alignpipe.servers import POOL

    svc = compose["services"]["pipeline"]
    assert argv(svc["entrypoint"]) == ["sh", "-c"]
    steps = [shlex.split(step) for step in " ".join(argv(svc["command"])).split("&&")]
    assert steps[0][:6] == ["prefect", "work-pool", "create", POOL, "--type", "process"]
    assert steps[1] == ["prefect", "--no-prompt", "deploy", "--all"]
    assert steps[2][:6] == ["exec", "prefect", "worker", "start", "--pool", POOL]
    pools = {d["work_pool"]["name"] for d in yaml.safe_load(open(ROOT / "prefect.yaml"))["deployments"]}
    assert pools == {POOL}
    workdir = [args for ins, args in dockerfile(DOCKER / "Dockerfile") if ins == "WORKDIR"][-1]
    assert svc["working_dir"] == workdir == "/app"
    copied = [args.split()[0] for ins, args in dockerfile(DOCKER / "Dockerfile") if ins == "COPY"]
    for needed in ("prefect.yaml", "flows", "configs"):
        assert any(c.rstrip("/") == needed or c == "." for c in copied), f"the image does not contain {needed}"


@pytest.mark.fast
def test_mlflow_command_is_a_valid_mlflow_server_call(compose):
    from mlflow.cli import cli

    cmd = argv(compose["services"]["mlflow"]["command"])
    assert cmd[:2] == ["mlflow", "server"]
    ctx = cli.commands["server"].make_context("server", cmd[2:])  # click parses, nothing runs
    assert ctx.params["artifacts_destination"] == "/mlartifacts" and ctx.params["serve_artifacts"]
    mounts = {v.split(":")[1] for v in compose["services"]["mlflow"]["volumes"]}
    assert "/mlartifacts" in mounts, "artifacts must live in a volume"


@pytest.mark.fast
def test_prefect_command_is_a_valid_prefect_server_call(compose):
    cmd = argv(compose["services"]["prefect-server"]["command"])
    assert cmd[:3] == ["prefect", "server", "start"]
    prefect = Path(sys.executable).with_name("prefect")
    out = subprocess.run([str(prefect), "server", "start", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    options = {a for a in cmd[3:] if a.startswith("--")}
    assert options and all(o in out.stdout for o in options), f"{options} vs prefect server start --help"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"


@pytest.mark.fast
def test_dockerfile_sources_and_entry_point():
    steps = dockerfile(DOCKER / "Dockerfile")
    for ins, args in steps:
        if ins == "COPY":
            *sources, _ = args.split()
            for s in sources:
                assert (ROOT / s).exists(), f"COPY {s}: not in the repo"
    runs = " ".join(args for ins, args in steps if ins == "RUN")
    torch_pin = next(ln for ln in (ROOT / "constraints.txt").read_text().splitlines() if ln.startswith("torch=="))
    assert torch_pin in runs and "constraints.txt" in runs, "the image installs the locked stack"
    entry = {ins: yaml.safe_load(args) for ins, args in steps if ins in ("ENTRYPOINT", "CMD")}  # JSON arrays
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry["ENTRYPOINT"][0] in scripts
    module, func = scripts[entry["ENTRYPOINT"][0]].split(":")
    parser = importlib.import_module(module)._parser()
    args = parser.parse_args(entry["CMD"])
    assert (ROOT / args.config).is_file() and callable(getattr(importlib.import_module(module), func))
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", ".alignpipe", ".git"} <= set(ignored), "keep the 2 GB venv and the state out of the build context"


@pytest.fixture(scope="module")
def databases(postgres):  # noqa: F811
    """The compose init script, run by psql on the private cluster; yields the admin URL."""
    from test_postgres import _pg_bin

    admin = postgres("postgres").replace("postgresql+psycopg2", "postgresql")
    done = subprocess.run(
        [str(_pg_bin() / "psql"), admin, "-v", "ON_ERROR_STOP=1", "-f", str(DOCKER / "postgres-init.sql")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return admin


@pytest.mark.slow
def test_init_script_creates_both_databases(databases):
    import psycopg2

    with psycopg2.connect(databases) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        assert {"prefect", "mlflow"} <= {r[0] for r in cur.fetchall()}
    with psycopg2.connect(databases.rsplit("/", 1)[0] + "/prefect") as conn, conn.cursor() as cur:
        cur.execute("SELECT extname FROM pg_extension")
        assert "pg_trgm" in {r[0] for r in cur.fetchall()}


def _local(url: str, databases: str) -> str:
    """A compose database URL pointed at the private cluster instead of the `postgres` service."""
    return url.replace("@postgres:5432/", "@" + urlsplit(databases).netloc.split("@")[1] + "/")


def _start(cmd, env, log):
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(healthcheck: list[str], port_from: str, port: int, proc, log: Path, limit: float = 240) -> None:
    """Run the service's own compose healthcheck (its port swapped for ours) until it passes."""
    probe = [a.replace(f"127.0.0.1:{port_from}/", f"127.0.0.1:{port}/") for a in healthcheck[1:]]
    probe[0] = sys.executable if probe[0] == "python" else probe[0]
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited: {log.read_text()[-3000:]}"
        if subprocess.run(probe, capture_output=True, timeout=30).returncode == 0:
            return
        time.sleep(2)
    raise AssertionError(f"not healthy after {limit:.0f}s: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_compose_servers_run_on_postgresql(compose, databases, tmp_path):
    """The compose commands and env of both servers, run here on the init script's databases
    (ports swapped for free ones), pass their own healthchecks and serve a client."""
    import psycopg2
    from mlflow.tracking import MlflowClient

    services = compose["services"]
    bin_dir = Path(sys.executable).parent
    mlflow_port, prefect_port = _free_ports(2)
    cmd = argv(services["mlflow"]["command"])
    cmd[0] = str(bin_dir / "mlflow")
    for flag, value in (
        ("--backend-store-uri", _local(cmd[cmd.index("--backend-store-uri") + 1], databases)),
        ("--artifacts-destination", str(tmp_path / "mlartifacts")),
        ("--host", "127.0.0.1"),
        ("--port", str(mlflow_port)),
    ):
        cmd[cmd.index(flag) + 1] = value
    mlflow_log = tmp_path / "mlflow.log"
    prefect_env = {k: v for k, v in env(services["prefect-server"]).items()}
    prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = _local(
        prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"], databases
    )
    prefect_env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    pcmd = argv(services["prefect-server"]["command"])
    pcmd[0] = str(bin_dir / "prefect")
    pcmd[pcmd.index("--host") + 1], pcmd[pcmd.index("--port") + 1] = "127.0.0.1", str(prefect_port)
    prefect_log = tmp_path / "prefect.log"
    with open(mlflow_log, "w") as ml, open(prefect_log, "w") as pl:
        mlflow_proc = _start(cmd, {}, ml)
        prefect_proc = _start(pcmd, prefect_env, pl)
        try:
            _wait_healthy(
                argv(services["mlflow"]["healthcheck"]["test"]), "5000", mlflow_port, mlflow_proc, mlflow_log
            )
            _wait_healthy(
                argv(services["prefect-server"]["healthcheck"]["test"]),
                "4200",
                prefect_port,
                prefect_proc,
                prefect_log,
            )
            # MLflow answers the pipeline's Host header (mlflow:5000) and refuses unknown ones
            for host, code in (("mlflow:5000", 200), ("elsewhere:5000", 403)):
                req = urllib.request.Request(
                    f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/search?max_results=1",
                    headers={"Host": host},
                )  # /health is exempt from the Host check
                try:
                    status = urllib.request.urlopen(req, timeout=10).status
                except urllib.error.HTTPError as e:
                    status = e.code
                assert status == code, host
            client = MlflowClient(tracking_uri=f"http://127.0.0.1:{mlflow_port}")
            run = client.create_run(client.create_experiment("compose-check"))
            client.log_metric(run.info.run_id, "x", 1.0)
            client.log_text(run.info.run_id, "hello", "note.txt")  # through the server's artifact proxy
            assert list((tmp_path / "mlartifacts").rglob("note.txt")), "artifacts land in --artifacts-destination"
            with psycopg2.connect(databases.rsplit("/", 1)[0] + "/mlflow") as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM runs")
                assert cur.fetchone()[0] == 1
            with psycopg2.connect(databases.rsplit("/", 1)[0] + "/prefect") as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM information_schema.tables WHERE table_name IN ('flow_run', 'deployment')"
                )
                assert cur.fetchone()[0] == 2, "Prefect migrated its schema into the prefect database"
        finally:
            _stop(prefect_proc)
            _stop(mlflow_proc)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.mark.fast
def test_tracking_uri_from_the_environment(compose, monkeypatch):
    """The pipeline container sets MLFLOW_TRACKING_URI; `tracking.uri` in a config still wins."""
    server = env(compose["services"]["pipeline"])["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    assert load_config(ROOT / "configs" / "tiny.yaml").tracking_uri == server
    assert (
        load_config(ROOT / "configs" / "tiny.yaml", ["tracking.uri=sqlite:///x.db"]).tracking_uri == "sqlite:///x.db"
    )
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert load_config(ROOT / "configs" / "tiny.yaml").tracking_uri.startswith("sqlite:///")
