"""Run a command and sample the resident memory (RSS) of every process of it from /proc every 0.2 s:
what the memory benchmarks (zero_memory.py, dpo_reference.py) share."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path


def run_sampled(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, dict[int, tuple[int, str]], float]:
    """(return code, combined output, {pid: (peak RSS in bytes, command line)}, wall seconds)."""
    peaks: dict[int, tuple[int, str]] = {}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for pid in _tree(proc.pid):
                rss, command = _rss_and_cmd(pid)
                if rss > peaks.get(pid, (0, ""))[0]:
                    peaks[pid] = (rss, command)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    out = proc.communicate()[0]
    done.set()
    sampler.join()
    return proc.returncode, out, peaks, time.monotonic() - started


def _tree(root: int) -> list[int]:
    """root and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_and_cmd(pid: int) -> tuple[int, str]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return 0, ""
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return (int(found.group(1)) * 1024 if found else 0), cmd
