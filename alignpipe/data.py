"""Data as users bring it: read any supported file or hub dataset, detect its format, normalise
its rows, apply the bad-row policy, and assemble a stage's training rows (mixture, held-out
categories, safety mixing, dedup, decontamination) with a report of every row dropped.

Reading goes through `datasets` (JSON/JSONL, Parquet, CSV, `save_to_disk` folders, hub ids);
when `datasets` cannot parse a JSON file, a line reader finds the exact line to report.

Normalised rows (plus `_src`/`_at`: the file and line a row came from):
- sft:        {instruction, input, output, category, history}
- preference: {instruction, input, chosen, rejected, category, history}
- eval:       {instruction, input, output, category, history, check}  (check: exact | refusal | comply)
`history` holds the turns before the last user message ({role, content}; a system turn first).
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# Placeholder inputs found in real Alpaca data that mean "no input".
_NO_INPUT = {"", "noinput", "no input", "<noinput>", "<no input>", "none", "n/a", "null", "<none>", "no_input"}
_CHECKS = ("exact", "refusal", "comply")
SFT_FORMATS = ("alpaca", "messages", "sharegpt", "prompt_completion", "self_instruct")
PREFERENCE_FORMATS = ("explicit", "implicit", "hh", "sharegpt")
FORMATS = {"sft": SFT_FORMATS, "eval": SFT_FORMATS, "preference": PREFERENCE_FORMATS}
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
          "bard": "assistant", "model": "assistant", "bot": "assistant", "system": "system"}
_LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


class DataError(Exception):
    """A data problem; the message names the file, the line and the field, and says the fix."""


class RowProblem(DataError):
    """One bad row: `reason` is a short code for counting (missing_field, empty_text, ...)."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def rows_digest(rows: list[dict]) -> str:
    """Content digest of normalised rows (what a stage trains on, whatever the source)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading records


def is_hub_id(path: str) -> bool:
    """`org/name` that is not a local file or folder: loaded from the Hugging Face Hub."""
    p = Path(path).expanduser()
    return not p.exists() and not path.startswith(("/", ".", "~")) and p.suffix not in _LOCAL_SUFFIXES


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
            raise DataError(f"{path}: not a local file and could not be loaded from the Hugging Face Hub ({type(e).__name__}: {str(e)[:200]}); check the path or the hub id") from None
        return ds.to_list(), [f"row {i + 1}" for i in range(len(ds))]
    if p.is_dir():
        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:
            raise DataError(f"{p}: a folder that is not a `save_to_disk` dataset ({str(e)[:200]}); give a data file or a saved dataset") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p}: no split '{split}' (has {', '.join(ds)}); set the source's `split`")
            ds = ds[split]
        return ds.to_list(), [f"row {i + 1}" for i in range(len(ds))]
    if not p.is_file():
        raise DataError(f"{p}: file not found; check the data path in the config")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: the file is empty; it needs at least one row")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".csv"):
        try:
            text_cells = {}
            if suffix == ".csv":  # every cell stays text ("2" is an answer, not a number); empty stays ""
                with open(p, newline="", encoding="utf-8") as f:
                    header = next(csv.reader(f))
                text_cells = {"features": datasets.Features({c: datasets.Value("string") for c in header}), "keep_default_na": False}
            ds = datasets.load_dataset(suffix[1:], data_files=str(p), split="train", **text_cells)
        except Exception as e:
            raise DataError(f"{p}: cannot read as {suffix[1:].upper()} ({type(e).__name__}: {str(e)[:200]})") from None
        first = 2 if suffix == ".csv" else 1  # CSV: line 1 is the header
        return ds.to_list(), [f"line {i + first}" if suffix == ".csv" else f"row {i + 1}" for i in range(len(ds))]
    quiet = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # it logs parse errors the line reader reports better
    try:
        records = datasets.load_dataset("json", data_files=str(p), split="train").to_list()
    except Exception:  # malformed JSON, mixed types, bad encoding: the line reader names the line
        return _read_json_lines(p)
    finally:
        datasets.logging.set_verbosity(quiet)
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        lines = _array_item_lines(text, len(records))
    else:
        lines = [n for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if len(lines) != len(records):  # e.g. a JSON object spread over lines: fall back to exact reading
        return _read_json_lines(p)
    return records, [f"line {n}" for n in lines]


def _read_json_lines(p: Path) -> tuple[list[Any], list[str]]:
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
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {e.lineno}: malformed JSON ({e.msg}); fix the syntax at column {e.colno}") from None
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
            raise DataError(f"{p}: line {n}: malformed JSON ({e.msg} at column {e.colno}); each line must be one JSON object") from None
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


# ---------------------------------------------------------------------------------------------
# Format detection


def detect_format(kind: str, records: list[Any], path: str) -> str:
    """The format of a file's records for a stage kind (sft, eval, preference), from its fields."""
    keys: set[str] = set()
    for rec in records[:200]:
        if isinstance(rec, dict):
            keys.update(k for k, v in rec.items() if v is not None)
    if kind == "preference":
        if "conversations" in keys and {"chosen", "rejected"} <= keys:
            return "sharegpt"
        if {"chosen", "rejected"} <= keys:
            if "prompt" in keys or "instruction" in keys:
                return "explicit"
            sample = next((r["chosen"] for r in records if isinstance(r, dict) and r.get("chosen") is not None), None)
            if isinstance(sample, list):
                return "implicit"
            if isinstance(sample, str) and "Human:" in sample:
                return "hh"
    else:
        if "messages" in keys:
            return "messages"
        if "conversations" in keys:
            return "sharegpt"
        if "instances" in keys and "instruction" in keys:
            return "self_instruct"
        if "prompt" in keys and "completion" in keys:
            return "prompt_completion"
        if "instruction" in keys or "output" in keys:
            return "alpaca"
    expected = ", ".join(FORMATS[kind])
    raise DataError(
        f"{path}: cannot tell the {kind} format from its fields ({', '.join(sorted(keys)) or 'none'}); "
        f"expected one of: {expected}; set the source's `format:` (e.g. data.{'preference' if kind == 'preference' else kind}.format={FORMATS[kind][0]})"
    )


# ---------------------------------------------------------------------------------------------
# Normalising one record


def _text(where: str, rec: dict, name: str, required: bool = True, default: str = "") -> str:
    value = rec.get(name)
    if value is None:
        if required:
            raise RowProblem("missing_field", f"{where}: missing field '{name}'; every row needs it")
        return default
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"{where}: field '{name}' must be a string, got {type(value).__name__}")
    return value


def _input(where: str, rec: dict, name: str = "input") -> str:
    value = _text(where, rec, name, required=False)
    return "" if value.strip().lower() in _NO_INPUT else value


def _messages(where: str, value: Any, name: str, role_key: str = "role", content_key: str = "content") -> list[dict]:
    """A list of {role, content} turns (ShareGPT's from/value mapped to them)."""
    if value is None:
        raise RowProblem("missing_field", f"{where}: missing field '{name}'; every row needs it")
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"{where}: field '{name}' must be a list of messages, got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get(role_key), str) or not isinstance(m.get(content_key), str):
            raise RowProblem("bad_message", f"{where}: field '{name}[{i}]' must be an object with string '{role_key}' and '{content_key}'")
        role = _ROLES.get(m[role_key].lower())
        if role is None:
            raise RowProblem("bad_role", f"{where}: field '{name}[{i}].{role_key}' is {m[role_key]!r}; expected user/human, assistant/gpt or system")
        out.append({"role": role, "content": m[content_key]})
    return out


def _split_prompt(where: str, turns: list[dict], name: str) -> tuple[str, list[dict]]:
    """(last user message, the turns before it) of a prompt that must end with a user turn."""
    if not turns or turns[-1]["role"] != "user":
        raise RowProblem("bad_turns", f"{where}: field '{name}' must end with a user turn")
    if not turns[-1]["content"].strip():
        raise RowProblem("empty_text", f"{where}: field '{name}' ends with an empty user turn")
    return turns[-1]["content"], turns[:-1]


def _answer(where: str, turn: dict, name: str, reason: str = "empty_text") -> str:
    if turn["role"] != "assistant":
        raise RowProblem("bad_turns", f"{where}: field '{name}' must end with an assistant turn")
    if not turn["content"].strip():
        raise RowProblem(reason, f"{where}: field '{name}' ends with an empty assistant turn")
    return turn["content"]


def _conversation_row(where: str, turns: list[dict], name: str) -> dict:
    """SFT from a conversation: the last assistant turn is the answer, the rest the prompt."""
    if not turns:
        raise RowProblem("empty_text", f"{where}: field '{name}' has no turns")
    output = _answer(where, turns[-1], name)
    instruction, history = _split_prompt(where, turns[:-1], name)
    return {"instruction": instruction, "input": "", "output": output, "history": history}


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_hh(where: str, text: str, name: str) -> list[dict]:
    """An Anthropic HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as turns."""
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowProblem("not_hh", f"{where}: field '{name}' is not an HH transcript (expected it to start with '\\n\\nHuman:')")
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()} for who, body in zip(parts[1::2], parts[2::2])]


def _pair_from_turns(where: str, chosen: list[dict], rejected: list[dict]) -> dict:
    """Implicit-prompt pair: the shared turns before the last assistant turn are the prompt."""
    c_answer = _answer(where, chosen[-1], "chosen", "empty_last_turn") if chosen else None
    r_answer = _answer(where, rejected[-1], "rejected", "empty_last_turn") if rejected else None
    if c_answer is None or r_answer is None:
        raise RowProblem("empty_text", f"{where}: field '{'chosen' if c_answer is None else 'rejected'}' has no turns")
    if chosen[:-1] != rejected[:-1]:
        n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
        raise RowProblem("prefix_mismatch", f"{where}: fields 'chosen' and 'rejected' start from different prompts (turn {n + 1} differs); a pair needs one shared prompt")
    instruction, history = _split_prompt(where, chosen[:-1], "chosen")
    return {"instruction": instruction, "input": "", "chosen": c_answer, "rejected": r_answer, "history": history}


def _completion(where: str, rec: dict, name: str) -> str:
    value = rec.get(name)
    if isinstance(value, list):
        turns = _messages(where, value, name)
        return _answer(where, turns[-1], name) if turns else _text(where, {}, name)
    if isinstance(value, dict):  # ShareGPT's {from, value}
        turns = _messages(where, [value], name, "from", "value")
        return _answer(where, turns[-1], name)
    text = _text(where, rec, name)
    if not text.strip():
        raise RowProblem("empty_text", f"{where}: field '{name}' is empty")
    return text


def normalise(kind: str, fmt: str, where: str, rec: Any, category: str | None = None, category_field: str = "category") -> list[dict]:
    """Normalised rows (usually one; a Self-Instruct task gives one per instance) of a record.
    The category comes from `category_field`, else `category` (the source's), else ""."""
    if not isinstance(rec, dict):
        raise RowProblem("not_object", f"{where}: a row must be a JSON object, got {type(rec).__name__}")
    if kind == "preference":
        if fmt == "hh":
            row = _pair_from_turns(where, parse_hh(where, _text(where, rec, "chosen"), "chosen"), parse_hh(where, _text(where, rec, "rejected"), "rejected"))
        elif fmt == "implicit":
            row = _pair_from_turns(where, _messages(where, rec.get("chosen"), "chosen"), _messages(where, rec.get("rejected"), "rejected"))
        elif fmt == "sharegpt":
            instruction, history = _split_prompt(where, _messages(where, rec.get("conversations"), "conversations", "from", "value"), "conversations")
            row = {"instruction": instruction, "input": "", "history": history,
                   "chosen": _completion(where, rec, "chosen"), "rejected": _completion(where, rec, "rejected")}
        else:  # explicit: prompt (text or messages) or instruction/input
            if isinstance(rec.get("prompt"), list):
                instruction, history = _split_prompt(where, _messages(where, rec["prompt"], "prompt"), "prompt")
                inp = ""
            elif "prompt" in rec and rec.get("instruction") is None:
                instruction, inp, history = _text(where, rec, "prompt"), "", []
            else:
                instruction, inp, history = _text(where, rec, "instruction"), _input(where, rec), []
            row = {"instruction": instruction, "input": inp, "history": history,
                   "chosen": _completion(where, rec, "chosen"), "rejected": _completion(where, rec, "rejected")}
        rows = [row]
    elif fmt == "messages":
        rows = [_conversation_row(where, _messages(where, rec.get("messages"), "messages"), "messages")]
    elif fmt == "sharegpt":
        rows = [_conversation_row(where, _messages(where, rec.get("conversations"), "conversations", "from", "value"), "conversations")]
    elif fmt == "prompt_completion":
        prompt = rec.get("prompt")
        if isinstance(prompt, list):
            instruction, history = _split_prompt(where, _messages(where, prompt, "prompt"), "prompt")
        else:
            instruction, history = _text(where, rec, "prompt"), []
        rows = [{"instruction": instruction, "input": "", "output": _completion(where, rec, "completion"), "history": history}]
    elif fmt == "self_instruct":
        instruction = _text(where, rec, "instruction")
        instances = rec.get("instances")
        if not isinstance(instances, list) or not instances:
            raise RowProblem("missing_field", f"{where}: field 'instances' must be a non-empty list of {{input, output}}")
        rows = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise RowProblem("wrong_type", f"{where}: field 'instances[{i}]' must be an object with 'input' and 'output'")
            rows.append({"instruction": instruction, "input": _input(where, inst), "output": _text(where, inst, "output"), "history": []})
        category = category or rec.get("motivation_app")
    else:  # alpaca
        rows = [{"instruction": _text(where, rec, "instruction"), "input": _input(where, rec), "output": _text(where, rec, "output"), "history": []}]
    given = rec.get(category_field)
    if given is not None and not isinstance(given, str):
        raise RowProblem("wrong_type", f"{where}: field '{category_field}' must be a string, got {type(given).__name__}")
    for row in rows:
        if not row["instruction"].strip():
            raise RowProblem("empty_text", f"{where}: field '{'instruction' if fmt in ('alpaca', 'self_instruct') else 'prompt'}' is empty")
        if kind != "preference" and not row["output"].strip():
            raise RowProblem("empty_text", f"{where}: field '{'output' if fmt in ('alpaca', 'self_instruct') else 'completion'}' is empty")
        row["category"] = given or category or ""
        if kind == "eval":
            check = _text(where, rec, "check", required=False, default="exact")
            if check not in _CHECKS:
                raise RowProblem("bad_value", f"{where}: field 'check' must be one of {', '.join(_CHECKS)}, got {check!r}")
            row["check"] = check
    return rows


# ---------------------------------------------------------------------------------------------
# One source


@dataclass
class SourceReport:
    """What happened to one source's rows: read, kept, dropped by reason, first problems."""

    path: str
    kind: str
    format: str = "?"
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        drops = ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items())) or "none"
        return f"{self.path}: {self.read} rows ({self.kind}), format {self.format}; kept {self.kept}, dropped: {drops}"

    def to_dict(self) -> dict:
        return {"path": self.path, "kind": self.kind, "format": self.format, "read": self.read, "kept": self.kept,
                "dropped": dict(self.dropped), "problems": self.problems[:20]}


def load_source(kind: str, source, on_bad_rows: str = "fail") -> tuple[list[dict], SourceReport]:
    """A source's normalised rows and its report. `source`: a path or a config DataSource.

    on_bad_rows=fail raises DataError at the first bad row; skip drops it, counted by reason.
    """
    if isinstance(source, (str, Path)):
        source = SimpleNamespace(path=str(source), format="auto", split="train")
    path, fmt = str(source.path), source.format or "auto"
    report = SourceReport(path, kind)
    records, where = read_table(path, source.split)
    report.read = len(records)
    if not records:
        raise DataError(f"{path}: no rows; it needs at least one")
    report.format = detect_format(kind, records, path) if fmt == "auto" else fmt
    if report.format not in FORMATS[kind]:
        raise DataError(f"{path}: format {report.format!r} is not a {kind} format; use one of {', '.join(FORMATS[kind])}")
    rows: list[dict] = []
    for rec, at in zip(records, where):
        try:
            got = normalise(kind, report.format, f"{path}: {at}", rec, getattr(source, "category", None), getattr(source, "category_field", "category"))
        except RowProblem as e:
            if on_bad_rows != "skip":
                raise
            report.dropped[e.reason] += 1
            report.problems.append(str(e))
            continue
        for r in got:
            r["_src"], r["_at"] = path, at
        rows.extend(got)
    if not rows:
        raise DataError(f"{path}: every row was dropped as bad ({', '.join(f'{n} {r}' for r, n in report.dropped.items())}); first: {report.problems[0]}")
    report.kept = len(rows)
    return rows, report


def load(kind: str, path: str | Path, format: str = "auto") -> list[dict]:
    """All rows of one data file (`sft`, `preference` or `eval`); raises DataError at a bad row."""
    return load_source(kind, SimpleNamespace(path=str(path), format=format, split="train"))[0]


# ---------------------------------------------------------------------------------------------
# A stage's rows


def sources(value) -> list:
    """A config data entry (one DataSource or a list of them) as a list."""
    if value is None:
        return []
    return [s for s in (value if isinstance(value, list) else [value]) if s is not None and s.path]


def mix(rows: list[dict], weight: float, max_rows: int | None, seed: int) -> list[dict]:
    """A source's share of a mixture: `weight` x its rows (above 1 repeats rows), capped at max_rows."""
    rng = random.Random(seed)
    whole, frac = int(weight), weight - int(weight)
    out = rows * whole
    if frac > 0:
        out += rng.sample(rows, round(len(rows) * frac))
    if max_rows is not None and len(out) > max_rows:
        out = rng.sample(out, max_rows)
    return out


def drop_duplicates(rows: list[dict], seen: set[str] | None = None) -> list[dict]:
    """Rows without exact duplicates (same prompt and answers, case and whitespace aside) of
    each other or of keys already in `seen` (updated)."""
    seen = set() if seen is None else seen
    out = []
    for r in rows:
        fields = [" ".join(str(r.get(k, "")).lower().split()) for k in ("instruction", "input", "output", "chosen", "rejected")]
        key = hashlib.sha256(json.dumps(fields + [r.get("history")]).encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def eval_sets(cfg) -> dict[str, list[dict]]:
    """Every evaluation set the config names, by path: prompts (eval) and pairs (eval_preference)."""
    out = {}
    for kind, entry in (("eval", cfg.data.eval), ("preference", cfg.data.eval_preference)):
        for src in sources(entry):
            out[src.path] = load_source(kind, src, "skip")[0]
    return out


def eval_rows(cfg, name: str = "eval") -> list[dict]:
    """Rows of every source of `data.eval` (prompts) or `data.eval_preference` (pairs)."""
    kind = "eval" if name == "eval" else "preference"
    return [r for src in sources(getattr(cfg.data, name)) for r in load_source(kind, src, cfg.data.on_bad_rows)[0]]


def seen_categories(cfg) -> set[str]:
    """Categories of the rows SFT trains on (held-out categories never are)."""
    return {r["category"] for r in stage_rows(cfg, "sft")[0]}


def stage_rows(cfg, kind: str, extra: list | None = None, evals: dict | None = None) -> tuple[list[dict], dict]:
    """(training rows, report) of a stage (`sft` or `preference`) under the config's data policy.

    Per source: read and validate (on_bad_rows), drop held-out categories; across sources: drop
    exact duplicates, decontaminate against every eval set (refusal rows too); then take each
    source's mixture share (weight, max_rows) and (SFT) mix in refusal rows at data.safety.fraction.
    Raises DataError on a bad row (fail) or on contamination (decontaminate: fail).
    """
    from alignpipe import decontam

    d = cfg.data
    heldout = set(d.heldout_categories)
    per_source = []
    for src in sources(getattr(d, kind)) + list(extra or []):
        got, rep = load_source(kind, src, d.on_bad_rows)
        kept = [r for r in got if r["category"] not in heldout]
        if len(got) - len(kept):
            rep.dropped["heldout_category"] += len(got) - len(kept)
        per_source.append((src, kept, rep))
    refusals: list[dict] = []
    if kind == "sft" and d.safety.path and d.safety.fraction > 0:
        refusals = [dict(r, _pool="safety") for r in load_source("sft", d.safety, d.on_bad_rows)[0]
                    if not d.safety.category or r["category"] == d.safety.category]
        if not refusals:
            raise DataError(f"{d.safety.path}: no refusal rows (category {d.safety.category!r}); check data.safety.category")
    report: dict[str, Any] = {}
    if d.dedup:
        seen: set[str] = set()
        for _, rows, rep in per_source:
            unique = drop_duplicates(rows, seen)
            if len(rows) - len(unique):
                rep.dropped["duplicate"] += len(rows) - len(unique)
            rows[:] = unique
        report["duplicates_dropped"] = sum(rep.dropped["duplicate"] for *_, rep in per_source)
    if d.decontaminate != "off":
        evals = eval_sets(cfg) if evals is None else evals
        everything = [r for _, rows, _ in per_source for r in rows] + refusals
        clean, report["decontamination"] = decontam.decontaminate(everything, evals, d.ngram, d.decontaminate)
        kept_ids = {id(r) for r in clean}
        for _, rows, rep in per_source:
            left = [r for r in rows if id(r) in kept_ids]
            if len(rows) - len(left):
                rep.dropped["contaminated"] += len(rows) - len(left)
            rows[:] = left
        refusals = [r for r in refusals if id(r) in kept_ids]
    out = []
    for i, (src, rows, rep) in enumerate(per_source):
        rows = mix(rows, getattr(src, "weight", 1.0), getattr(src, "max_rows", None), cfg.seed + i)
        rep.kept = len(rows)
        out.extend(rows)
    if refusals:
        want = round(d.safety.fraction * len(out) / (1 - d.safety.fraction))
        rng = random.Random(cfg.seed)
        picked = rng.sample(refusals, want) if want <= len(refusals) else rng.choices(refusals, k=want)
        out.extend(dict(r) for r in picked)
        report["safety_rows"] = len(picked)
    report["sources"] = [rep.to_dict() for *_, rep in per_source]
    report["rows"] = len(out)
    if not out:
        raise DataError(f"data.{kind}: no training rows left after the data policy (dropped: {[s['dropped'] for s in report['sources']]})")
    return out, report


def log_report(report: dict, name: str, context: str) -> None:
    """The stage's data report as an MLflow artifact, dropped-row counts as metrics, and each
    source as a dataset input of the run (`context`: train, preference, ...) with its kept rows."""
    from alignpipe import tracking

    tracking.log_json(report, f"{name}.json")
    for s in report["sources"]:
        tracking.log_dataset(s["path"], context, rows=s["kept"])
    counts: Counter = Counter()
    for s in report["sources"]:
        counts.update(s["dropped"])
    metrics = {f"data_dropped_{k}": v for k, v in counts.items()}
    metrics["data_duplicates_dropped"] = report.get("duplicates_dropped", 0)
    metrics["data_contaminated_dropped"] = report.get("decontamination", {}).get("removed", 0)
    metrics["data_rows"] = report["rows"]
    tracking.log_metrics({k: float(v) for k, v in metrics.items()})


def row_key(row: dict) -> str:
    parts = [row["instruction"], row["input"]] + ([json.dumps(row["history"])] if row.get("history") else [])
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


def split_validation(rows: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(train, validation): the n rows with the smallest prompt hashes are held out.

    Deterministic and independent of row order; every row with a held-out prompt leaves training.
    """
    if n <= 0 or len(rows) <= n:
        return rows, []
    held = set(sorted({row_key(r) for r in rows})[:n])
    return [r for r in rows if row_key(r) not in held], [r for r in rows if row_key(r) in held]
