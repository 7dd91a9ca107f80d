"""Reading the stages' data files into normalised rows, with errors that name file, line and field.

Row shapes after loading:
- sft:        {instruction, input, output, category}
- preference: {instruction, input, chosen, rejected, category}
- eval:       {instruction, input, output, category, check}    (check: exact | refusal | comply)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Placeholder inputs found in real Alpaca data that mean "no input".
_NO_INPUT = {"", "noinput", "no input", "<noinput>", "<no input>", "none", "n/a", "null"}
_CHECKS = ("exact", "refusal", "comply")


class DataError(Exception):
    """A data problem; the message names the file, the line and the field, and says the fix."""


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed record) for a .jsonl file or a .json array/object-per-line file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the data path in the config")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{p}: line {line}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{p}: the file is empty; it needs at least one row")
    stripped = text.lstrip()
    if p.suffix == ".json" and stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {e.lineno}: malformed JSON ({e.msg}); fix the syntax at column {e.colno}") from None
        if not data:
            raise DataError(f"{p}: the JSON array is empty; it needs at least one row")
        starts = _array_item_lines(text, len(data))
        return list(zip(starts, data))
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {n}: malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
    return records


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


def _field(path, line, rec: dict, name: str, required: bool, default: str = "") -> str:
    if name not in rec or rec[name] is None:
        if required:
            raise DataError(f"{path}: line {line}: missing field '{name}'; every row needs it")
        return default
    value = rec[name]
    if not isinstance(value, str):
        raise DataError(f"{path}: line {line}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def _input(path, line, rec) -> str:
    value = _field(path, line, rec, "input", required=False)
    return "" if value.strip().lower() in _NO_INPUT else value


def normalise(kind: str, path, line: int, rec: Any) -> dict[str, str]:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: line {line}: a row must be a JSON object, got {type(rec).__name__}")
    category = _field(path, line, rec, "category", required=False, default="")
    if kind == "preference":
        if "prompt" in rec and "instruction" not in rec:
            instruction, inp = _field(path, line, rec, "prompt", True), ""
        else:
            instruction, inp = _field(path, line, rec, "instruction", True), _input(path, line, rec)
        return {
            "instruction": instruction,
            "input": inp,
            "chosen": _field(path, line, rec, "chosen", True),
            "rejected": _field(path, line, rec, "rejected", True),
            "category": category,
        }
    row = {
        "instruction": _field(path, line, rec, "instruction", True),
        "input": _input(path, line, rec),
        "output": _field(path, line, rec, "output", True),
        "category": category,
    }
    if kind == "eval":
        check = _field(path, line, rec, "check", required=False, default="exact")
        if check not in _CHECKS:
            raise DataError(f"{path}: line {line}: field 'check' must be one of {', '.join(_CHECKS)}, got {check!r}")
        row["check"] = check
    return row


def load(kind: str, path: str | Path) -> list[dict[str, str]]:
    """All rows of a data file for a stage (`sft`, `preference` or `eval`); raises DataError."""
    rows = [normalise(kind, path, line, rec) for line, rec in read_records(path)]
    if not rows:
        raise DataError(f"{path}: no rows; it needs at least one")
    return rows


def problems(kind: str, path: str | Path, limit: int = 20) -> tuple[int, list[str]]:
    """(rows read, every problem up to `limit`) for a data file, without stopping at the first."""
    try:
        records = read_records(path)
    except DataError as e:
        return 0, [str(e)]
    found = []
    for line, rec in records:
        try:
            normalise(kind, path, line, rec)
        except DataError as e:
            found.append(str(e))
            if len(found) >= limit:
                found.append(f"{path}: (stopped after {limit} problems)")
                break
    return len(records), found


def row_key(row: dict[str, str]) -> str:
    return hashlib.sha256(f"{row['instruction']}\x00{row['input']}".encode()).hexdigest()


def split_validation(rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): the n rows with the smallest prompt hashes are held out.

    Deterministic and independent of row order; every row with a held-out prompt leaves training.
    """
    if n <= 0 or len(rows) <= n:
        return rows, []
    held = set(sorted({row_key(r) for r in rows})[:n])
    return [r for r in rows if row_key(r) not in held], [r for r in rows if row_key(r) in held]
