"""Small file-system rules every layer shares, each written once: where the state lives, whether
a name is a local path or a Hugging Face Hub id, content digests, atomic writes, and temporary
environment variables."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# File name endings that mark a local data file, even before it exists.
DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


def state_home(state_dir: str | os.PathLike | None = None) -> Path:
    """The state dir: the given one, else $ALIGNPIPE_HOME, else ./.alignpipe (absolute)."""
    return Path(state_dir or os.environ.get("ALIGNPIPE_HOME") or ".alignpipe").resolve()


def written_as_path(value: str) -> bool:
    """A name written as a local path (absolute, ./, ../, ~). Anything else may be a hub id."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).is_absolute()


def is_hub_id(value: str) -> bool:
    """`org/name` that is neither written as a path, nor an existing file or folder, nor named
    like a data file: loaded from the Hugging Face Hub."""
    p = Path(value).expanduser()
    return (
        not written_as_path(value) and not value.startswith(".") and not p.exists() and p.suffix not in DATA_SUFFIXES
    )


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path: str) -> str | None:
    """sha256 of a file; of (name, size, mtime) of every file in a dir; None for a hub id."""
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        entries = [
            (str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(p.rglob("*"))
            if f.is_file()
        ]
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON so that readers see the old file or the complete new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


@contextmanager
def atomic_dir(target: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling dir to fill; move it to `target` only when the block completes.

    replace=True: an existing `target` is replaced. replace=False: an existing `target` (another
    process finished the same build first) is kept and the new copy dropped."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # replace=False and the target exists
        shutil.rmtree(tmp, ignore_errors=True)


class FileLock:
    """An exclusive advisory lock on a file, across processes (flock): released on `release`, or
    by the OS when the process dies, so a killed holder never leaves it stuck."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def acquire(self, waiting: str | None = None) -> FileLock:
        """Take the lock; if another process holds it, print `waiting` (when given) and wait."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(waiting, flush=True)
            fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


@contextmanager
def file_lock(path: Path, waiting: str | None = None) -> Iterator[None]:
    """Hold FileLock(path) for the block."""
    lock = FileLock(path).acquire(waiting)
    try:
        yield
    finally:
        lock.release()


@contextmanager
def env_override(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block; restore them after."""
    saved = {k: os.environ.get(k) for k in values}
    _apply(values)
    try:
        yield
    finally:
        _apply(saved)


def _apply(values: dict[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
