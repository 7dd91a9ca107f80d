"""Process lifetimes: nothing the project starts outlives what started it, even when that is
killed with SIGKILL (which runs no `finally`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether a process runs (someone else's counts; a zombie, exited but not reaped, does not).
    A negative pid names a process group, as for `os.kill`: alive while it has any member."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if pid < 0:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def children(pid: int, marker: bytes) -> list[int]:
    """Live child processes of `pid` whose command line contains `marker`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] not in "ZX" and marker in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def reap_with(owner: int, pids: list[int]) -> None:
    """Start a small detached watchdog that stops `pids` (SIGTERM, then SIGKILL) once `owner` is
    gone: for helpers a library started (Prefect's temporary server) and launched jobs, which
    would otherwise outlive a SIGKILLed owner. A negative pid names a process group, as for
    `os.kill`. The watchdog exits by itself once the helpers are gone."""
    if not pids:
        return
    subprocess.Popen(
        [sys.executable, "-m", "alignpipe.core.processes", str(owner), *map(str, pids)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop_on_sigterm(exc: type[BaseException] = KeyboardInterrupt, grace: float = 20.0) -> None:
    """SIGTERM (a `kill`, a cancelled flow run) raises `exc` in the main thread, so `finally`
    blocks run: launched process groups are killed, MLflow runs end FAILED. Training that runs in
    another thread (a Prefect task) cannot be interrupted: after `grace` seconds the process exits
    anyway (143), and the next start ends the runs it left open as KILLED."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        timer = threading.Timer(grace, os._exit, args=(128 + signal.SIGTERM,))
        timer.daemon = True
        timer.start()
        raise exc(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)


WATCH_ENV = "ALIGNPIPE_LAUNCHED_BY"  # set in a launched job's environment: the pid that launched it


def die_with_launcher(interval: float = 1.0) -> None:
    """In a rank: if the process that launched the job dies, even by SIGKILL (which gives it no
    chance to stop its ranks), SIGKILL this rank's process group: under the deepspeed launcher the
    launcher and every rank; under accelerate/torchrun each rank has its own group, and the
    launcher ends when its ranks do. Call it first: a rank's heavy imports take seconds, and a job
    may be killed during them. (The launching process also starts a `reap_with` watchdog on the
    launcher's group; this is the second line.)"""
    pid = int(os.environ.get(WATCH_ENV, "0") or 0)
    if pid <= 0:
        return

    def watch() -> None:
        while True:
            if not alive(pid):
                try:  # our output went to the dead process: printing may raise BrokenPipeError
                    print(f"the process that launched this job ({pid}) is gone: stopping this rank", flush=True)
                except OSError:
                    pass
                os.killpg(os.getpgid(0), signal.SIGKILL)
            time.sleep(interval)

    threading.Thread(target=watch, daemon=True, name="alignpipe-launcher-watch").start()


def _watchdog(owner: int, pids: list[int]) -> None:
    """`reap_with`'s process: wait for the owner (or the helpers) to go, then stop the helpers."""

    def running() -> list[int]:
        return [p for p in pids if alive(p)]

    while alive(owner) and running():
        time.sleep(1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in running():
            try:
                os.kill(p, sig)
            except OSError:
                pass
        for _ in range(30):  # up to 3 s to stop
            if not running():
                return
            time.sleep(0.1)


if __name__ == "__main__":
    _watchdog(int(sys.argv[1]), [int(p) for p in sys.argv[2:]])
