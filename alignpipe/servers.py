"""`alignpipe up | down | status`: a local Prefect server, an MLflow server, the `alignpipe` process
work pool with the deployments of prefect.yaml on it (`prefect deploy --all`, as a user would run
it), and a worker of that pool, all on 127.0.0.1.

State lives under one dir (`--home`, default $ALIGNPIPE_HOME or ./.alignpipe): Prefect's sqlite
database (prefect/), MLflow's (mlflow.db, mlartifacts/), logs/ and pids/. Each process runs in
its own process group and is stopped by its recorded PID."""

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


def up(home: Path, prefect_port: int = 4200, mlflow_port: int = 5000, runs: int = 2, timeout: float = 180) -> dict:
    """Start what is not running yet; return the URLs. `runs`: the worker's concurrency limit (flow
    runs at once on this machine). ServerError names what failed and its log."""
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
    env = {
        **os.environ,
        "PREFECT_HOME": str(home / "prefect"),
        "ALIGNPIPE_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
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
            f"sqlite:///{home / 'mlflow.db'}",
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
    prefect = str(bin_dir / "prefect")
    _run(home, "deploy", [prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], env)
    _run(home, "deploy", [prefect, "--no-prompt", "deploy", "--all"], env)
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_WORKER_PREFETCH_SECONDS": "2"}
    _start(home, "worker", [prefect, "worker", "start", "--pool", POOL, "--limit", str(runs)], worker_env)
    _wait(home, "worker", f"{u['PREFECT_API_URL']}/work_pools/{POOL}", deadline, until=_has_worker)
    (home / "servers.json").write_text(json.dumps(u, indent=2))
    return u


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
