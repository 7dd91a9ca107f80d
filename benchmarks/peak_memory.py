"""What the memory benchmarks (zero_memory.py, dpo_reference.py) share: a locally built model of a
given size, and a command run while the resident memory (RSS) of each of its processes is sampled
from /proc every 0.2 s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def local_model(hidden: int, layers: int) -> tuple[Path, int]:
    """A Llama of this size built in $ALIGNPIPE_CACHE (random init, one pretraining step: no hub);
    returns its folder and its parameter count."""
    os.environ.setdefault("ALIGNPIPE_CACHE", str(REPO / ".alignpipe" / "cache"))
    sys.path.insert(0, str(REPO))
    from alignpipe.core.config import TinySpec
    from alignpipe.training import models

    heads = max(1, hidden // 64)
    spec = TinySpec(hidden_size=hidden, num_layers=layers, num_heads=heads, num_kv_heads=heads)
    spec.pretrain_steps, spec.pretrain_batch_size = 1, 1
    model = models.build_tiny(spec, Path(os.environ["ALIGNPIPE_CACHE"]))
    return model, json.loads((model / "alignpipe_tiny.json").read_text())["parameters"]


def run_sampled(cmd: list[str], cwd: Path, env: dict[str, str], until: str | None = None) -> dict:
    """Run `cmd`; returns rc, out (stdout and stderr), wall (s), peaks ({pid: (peak RSS bytes, command
    line)}) and, with `until` (a regex), phase_peaks: the same, but only up to the first output line
    that matches it (e.g. the end of training, before the model is saved and checked)."""
    peaks: dict[int, tuple[int, str]] = {}
    phase_peaks: dict[int, tuple[int, str]] = {}
    in_phase = threading.Event()
    in_phase.set()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for pid in _tree(proc.pid):
                rss, command = _rss_and_cmd(pid)
                for table, on in ((peaks, True), (phase_peaks, in_phase.is_set())):
                    if on and rss > table.get(pid, (0, ""))[0]:
                        table[pid] = (rss, command)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if until and in_phase.is_set() and re.search(until, line):
            in_phase.clear()
    proc.wait()
    done.set()
    sampler.join()
    return {
        "rc": proc.returncode,
        "out": "".join(lines),
        "wall": time.monotonic() - started,
        "peaks": peaks,
        "phase_peaks": phase_peaks if until else {},
    }


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
