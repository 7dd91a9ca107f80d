"""`alignpipe up | down | status`: a local Prefect server, an MLflow server, the `alignpipe` process
work pool with the deployments of prefect.yaml on it (`prefect deploy --all`, as a user would run
it), and a worker of that pool, all on 127.0.0.1.

State lives under one dir (`--home`, default $ALIGNPIPE_HOME or ./.alignpipe): Prefect's sqlite
database (prefect/), MLflow's (mlflow.db, mlartifacts/), logs/ and pids/. Each process runs in
its own process group and is stopped by its recorded PID.

Several machines: `up --database postgresql://USER@HOST:PORT` keeps Prefect's and MLflow's
databases in PostgreSQL; MLflow serves the artifacts over HTTP; every machine mounts the same
state dir (models, Prefect's results, locks) and runs `alignpipe worker` against these servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from alignpipe.core import processes

ORDER = ("prefect", "mlflow", "worker")  # started in this order, stopped in reverse
ROOT = Path(__file__).resolve().parents[1]  # the checkout: prefect.yaml, flows/, configs/
POOL = "alignpipe"  # prefect.yaml's work pool


class ServerError(RuntimeError):
    pass


def urls(prefect_port: int, mlflow_port: int) -> dict[str, str]:
    return {
        "prefect": f"http://127.0.0.1:{prefect_port}",
        "mlflow": f"http://127.0.0.1:{mlflow_port}",
        "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api",
    }


def up(
    home: Path,
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    runs: int = 2,
    timeout: float = 180,
    database: str | None = None,
) -> dict:
    """Start what is not running yet; return the URLs. `runs`: the worker's concurrency limit (flow
    runs at once on this machine). `database`: a PostgreSQL server for Prefect's and MLflow's
    databases instead of sqlite files under `home`. ServerError names what failed and its log."""
    running = status(home)
    if all(running[name]["alive"] for name in ORDER):
        return json.loads((home / "servers.json").read_text())
    if any(running[name]["alive"] for name in ORDER):
        raise ServerError(f"some services under {home} are running and some are not: run `alignpipe down` first")
    for port, flag in ((prefect_port, "--prefect-port"), (mlflow_port, "--mlflow-port")):
        if _port_busy(port):
            raise ServerError(f"port {port} on 127.0.0.1 is in use: stop what holds it or pass {flag} N")
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    u = urls(prefect_port, mlflow_port)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, **state_env(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    # the UI's pages call this API; unset, it is :4200 whatever --port says (found in a browser)
    env["PREFECT_SERVER_UI_API_URL"] = u["PREFECT_API_URL"]
    mlflow_store = f"sqlite:///{home / 'mlflow.db'}"
    if database:
        server = postgres_databases(database, ("prefect", "mlflow"))
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"postgresql+asyncpg://{server}/prefect"
        mlflow_store = f"postgresql+psycopg2://{server}/mlflow"
    _start(
        home,
        "prefect",
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        env,
    )
    _start(
        home,
        "mlflow",
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            mlflow_store,
            "--artifacts-destination",
            str(home / "mlartifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
            "--workers",
            "1",
        ],
        env,
    )
    deadline = time.monotonic() + timeout
    _wait(home, "prefect", f"{u['PREFECT_API_URL']}/health", deadline)
    _wait(home, "mlflow", f"{u['mlflow']}/health", deadline)
    env |= {"PREFECT_API_URL": u["PREFECT_API_URL"], "MLFLOW_TRACKING_URI": u["mlflow"], "PYTHONUNBUFFERED": "1"}
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)  # the clients talk to the API, not the database
    prefect = str(bin_dir / "prefect")
    _run(home, "deploy", [prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    _run(home, "deploy", [prefect, "--no-prompt", "deploy", "--all"], env)
    _start(home, "worker", worker_command(runs), worker_env(home, u["PREFECT_API_URL"], u["mlflow"]))
    _wait(home, "worker", f"{u['PREFECT_API_URL']}/work_pools/{POOL}", deadline, until=_has_worker)
    (home / "servers.json").write_text(
        json.dumps(u | ({"database": _hide_password(database)} if database else {}), indent=2)
    )
    return u


def state_env(home: Path) -> dict[str, str]:
    """The shared state dir: models, checkpoints and locks (ALIGNPIPE_HOME), Prefect's persisted task
    results (under PREFECT_HOME/storage), so a stage cached by one worker is a hit on every other."""
    return {"ALIGNPIPE_HOME": str(home), "PREFECT_HOME": str(home / "prefect")}


def worker_env(home: Path, prefect_api: str, mlflow_uri: str) -> dict[str, str]:
    """The environment of a worker of the pool, and so of every flow run it starts."""
    return {
        **os.environ,
        **state_env(home),
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": mlflow_uri,
        "PYTHONUNBUFFERED": "1",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_WORKER_PREFETCH_SECONDS": "2",
    }


def worker_command(runs: int, name: str | None = None) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", POOL, "--limit", str(runs)]
    return cmd + (["--name", name] if name else [])


def check_reachable(prefect_api: str, mlflow_uri: str) -> None:
    """Both servers answer: ServerError naming the one that does not, before a worker starts."""
    for what, url, flag in (
        (prefect_api, f"{prefect_api}/health", "--prefect"),
        (mlflow_uri, f"{mlflow_uri}/health", "--mlflow"),
    ):
        try:
            _answers(url)
        except (OSError, ValueError) as e:
            raise ServerError(
                f"{what} does not answer ({e}): start the servers (`alignpipe up`) or fix {flag}"
            ) from None


def postgres_databases(url: str, names: tuple[str, ...]) -> str:
    """Create the databases `names` on the PostgreSQL server `url` (postgresql://USER[:PASSWORD]@HOST[:PORT])
    where missing; returns USER[:PASSWORD]@HOST[:PORT]. ServerError if it is not such a URL or does not answer."""
    scheme, sep, rest = url.partition("://")
    server = rest.split("/", 1)[0]
    if not sep or scheme.split("+", 1)[0] != "postgresql" or not server:
        raise ServerError(f"--database {_hide_password(url)}: expected postgresql://USER[:PASSWORD]@HOST[:PORT]")
    try:
        import psycopg2

        conn = psycopg2.connect(f"postgresql://{server}/postgres", connect_timeout=10)
    except Exception as e:  # ImportError, OperationalError
        raise ServerError(
            f"--database {_hide_password(url)}: cannot connect ({str(e).strip().splitlines()[0]})"
        ) from None
    conn.autocommit = True
    with conn.cursor() as cur:
        for name in names:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return server


def _hide_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***{at}{host}" if ":" in auth else url


def down(home: Path) -> list[str]:
    """Stop every recorded process group (the worker first); returns what was stopped."""
    stopped = []
    for name in reversed(ORDER):
        pid_file = home / "pids" / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        if processes.alive(pid):
            _kill_group(pid)
            stopped.append(f"{name} (pid {pid})")
        pid_file.unlink()
    (home / "servers.json").unlink(missing_ok=True)
    return stopped


def status(home: Path) -> dict[str, dict]:
    """Per service: pid, alive, and (when up) its URL."""
    u = json.loads((home / "servers.json").read_text()) if (home / "servers.json").is_file() else {}
    out = {}
    for name in ORDER:
        pid_file = home / "pids" / f"{name}.pid"
        pid = int(pid_file.read_text()) if pid_file.is_file() else None
        out[name] = {
            "pid": pid,
            "alive": bool(pid and processes.alive(pid)),
            "url": u.get(name),
            "log": str(home / "logs" / f"{name}.log"),
        }
    return out


def default_signals() -> None:
    """SIGINT and SIGTERM back to their defaults, unblocked, for a server or worker about to start. A
    process started in the background by a script (`cmd &`) inherits an ignored SIGINT, and exec
    keeps it: Prefect's worker stops on SIGTERM by sending itself SIGINT, so it would never stop."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def _start(home: Path, name: str, cmd: list[str], env: dict[str, str]) -> int:
    (home / "logs").mkdir(exist_ok=True)
    (home / "pids").mkdir(exist_ok=True)
    log = open(home / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=os.getcwd(),
        preexec_fn=default_signals,
    )
    (home / "pids" / f"{name}.pid").write_text(str(proc.pid))
    return proc.pid


def _run(home: Path, name: str, cmd: list[str], env: dict[str, str]) -> None:
    """A one-off command (its output appended to logs/NAME.log); ServerError if it fails."""
    (home / "logs").mkdir(exist_ok=True)
    with open(home / "logs" / f"{name}.log", "ab") as log:
        done = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT)
    if done.returncode != 0:
        down(home)
        raise ServerError(f"`{' '.join(cmd[1:])}` failed; see {home / 'logs' / f'{name}.log'}")


def _has_worker(url: str) -> bool:
    """The pool has a worker online (Prefect marks a pool READY once one polls it)."""
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r).get("status") == "READY"


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status == 200


def _wait(home: Path, name: str, url: str, deadline: float, until=_answers) -> None:
    pid = int((home / "pids" / f"{name}.pid").read_text())
    while time.monotonic() < deadline:
        if not processes.alive(pid):
            down(home)
            raise ServerError(f"{name} exited during start-up; see {home / 'logs' / f'{name}.log'}")
        try:
            if until(url):
                return
        except OSError:
            pass
        time.sleep(1)
    down(home)
    raise ServerError(f"{name} did not answer {url} in time; see {home / 'logs' / f'{name}.log'}")


def _kill_group(pid: int) -> None:
    """SIGTERM the process group, SIGKILL whatever is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0
