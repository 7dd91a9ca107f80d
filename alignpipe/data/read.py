"""Reading data as users bring it: JSON/JSONL (plain or gzip-compressed), Parquet, CSV,
`save_to_disk` folders and hub ids. JSON is read line by line with the `json` module, as the
user wrote it: no type inference (a "3" stays a string), and an error names the exact line."""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path
from typing import Any

from alignpipe.core.files import is_hub_id


class DataError(Exception):
    """A data problem; the message names the file, the line and the field, and says the fix."""


class RowProblem(DataError):
    """One bad row: `reason` is a short code for counting (missing_field, empty_text, ...)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def read_table(path: str | Path, split: str = "train") -> tuple[list[Any], list[str]]:
    """(records, where each came from: 'line N' or 'row N') of a data file, folder or hub id."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    path = str(path)
    p = Path(path).expanduser()
    if is_hub_id(path):
        try:
            ds = datasets.load_dataset(path, split=split)
        except Exception as e:  # offline, unknown id, no such split: all surface here
            raise DataError(
                f"{path}: not a local file and could not be loaded from the Hugging Face Hub "
                f"({type(e).__name__}: {str(e)[:200]}); check the path or the hub id"
            ) from None
        return ds.to_list(), [f"row {i + 1}" for i in range(len(ds))]
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:
            raise DataError(
                f"{p}: a folder that is not a `save_to_disk` dataset ({str(e)[:200]}); "
                "give a data file or a saved dataset"
            ) from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p}: no split '{split}' (has {', '.join(ds)}); set the source's `split`")
            ds = ds[split]
        return ds.to_list(), [f"row {i + 1}" for i in range(len(ds))]
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the data path in the config")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty; it needs at least one row")
    _readable(p)
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".csv"):
        try:
            text_cells = {}
            if suffix == ".csv":  # every cell stays text ("2" is an answer, not a number); empty stays ""
                with open(p, newline="", encoding="utf-8") as f:
                    header = next(csv.reader(f))
                text_cells = {
                    "features": datasets.Features({c: datasets.Value("string") for c in header}),
                    "keep_default_na": False,
                }
            ds = datasets.load_dataset(suffix[1:], data_files=str(p), split="train", **text_cells)
        except Exception as e:
            raise DataError(f"{p}: cannot read as {suffix[1:].upper()} ({type(e).__name__}: {str(e)[:200]})") from None
        first = 2 if suffix == ".csv" else 1  # CSV: line 1 is the header
        return ds.to_list(), [f"line {i + first}" if suffix == ".csv" else f"row {i + 1}" for i in range(len(ds))]
    return _read_json_lines(p)


def _readable(p: Path) -> None:
    """The file can be opened for reading, or a DataError saying why and what to do."""
    try:
        with open(p, "rb") as f:
            f.read(1)
    except PermissionError:
        raise DataError(f"{p}: permission denied; make the file readable (chmod +r) or copy it") from None
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror}); check the file") from None


_COMPRESSED = {b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"(\xb5/\xfd": "zstd"}


def _read_json_lines(p: Path) -> tuple[list[Any], list[str]]:
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the data path in the config")
    raw = p.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip, whatever the name says: read through it
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{p}: a damaged gzip file ({e}); re-create or decompress it") from None
    kind = next((name for magic, name in _COMPRESSED.items() if raw.startswith(magic)), None)
    if kind:
        raise DataError(f"{p}: a {kind}-compressed file, not JSON; decompress it first (or gzip it: gzip is read)")
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is dropped
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(
            f"{p}: line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); re-save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{p}: the file is empty; it needs at least one row")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{p}: line {e.lineno}: malformed JSON ({e.msg}); fix the syntax at column {e.colno}"
            ) from None
        if not data:
            raise DataError(f"{p}: the JSON array is empty; it needs at least one row")
        return data, [f"line {n}" for n in _array_item_lines(text, len(data))]
    records, where = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{p}: line {n}: malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON object"
            ) from None
        where.append(f"line {n}")
    return records, where


def _array_item_lines(text: str, count: int) -> list[int]:
    """Best-effort line numbers of the top-level items of a JSON array (for error messages)."""
    lines, depth, in_str, esc, line = [], 0, False, False, 1
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            esc = not esc and ch == "\\"
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth == 2 and ch == "{":
                lines.append(line)
        elif ch in "]}":
            depth -= 1
    return (lines + [0] * count)[:count]
