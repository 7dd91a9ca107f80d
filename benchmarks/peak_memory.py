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


def run_sampled(cmd: list[str], cwd: Path, env: dict[str, str], until: str | None = None, times: int = 1) -> dict:
    """Run `cmd`; returns rc, out (stdout and stderr), wall (s), peaks ({pid: (peak RSS bytes, command
    line)}) and, with `until` (a regex), phase_peaks: the same, but only up to the `times`-th output
    line that matches it (e.g. the last optimizer step's log, before checkpoints and the model are saved). detail and
    phase_detail: {pid: {kind: peak bytes}} for the kinds of `_memory` (rss, anon, file, shmem, pss)."""
    peaks: dict[int, tuple[int, str]] = {}
    phase_peaks: dict[int, tuple[int, str]] = {}
    detail: dict[int, dict[str, int]] = {}
    phase_detail: dict[int, dict[str, int]] = {}
    in_phase = threading.Event()
    in_phase.set()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            for pid in _tree(proc.pid):
                memory, command = _memory(pid)
                rss = memory.get("rss", 0)
                for table, kinds, on in ((peaks, detail, True), (phase_peaks, phase_detail, in_phase.is_set())):
                    if on and rss > table.get(pid, (0, ""))[0]:
                        table[pid] = (rss, command)
                    if on:
                        seen = kinds.setdefault(pid, {})
                        for kind, value in memory.items():
                            seen[kind] = max(seen.get(kind, 0), value)
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    lines, matched = [], 0
    for line in proc.stdout:
        lines.append(line)
        if until and in_phase.is_set() and re.search(until, line):
            matched += 1
            if matched == times:
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
        "detail": detail,
        "phase_detail": phase_detail if until else {},
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


def _memory(pid: int) -> tuple[dict[str, int], str]:
    """A process's resident memory in bytes: rss (all of it), anon (private heap), file (mapped files:
    libraries, mmapped checkpoints), shmem (shared memory) and pss (the proportional share: a page
    shared by n processes counts 1/n in each), and its command line."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return {}, ""
    fields = {"rss": (status, "VmRSS"), "anon": (status, "RssAnon"), "file": (status, "RssFile")}
    fields |= {"shmem": (status, "RssShmem"), "pss": (rollup, "Pss")}
    memory = {}
    for kind, (text, name) in fields.items():
        found = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        if found:
            memory[kind] = int(found.group(1)) * 1024
    return memory, cmd
