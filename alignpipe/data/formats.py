"""Data formats: detect a file's format from its fields, and normalise each record to the rows the
stages use. One normaliser per (kind, format) in NORMALISERS; every other part of the pipeline
sees only normalised rows (plus `_src`/`_at`: the file and line a row came from):
- sft:        {instruction, input, output, category, history}
- preference: {instruction, input, chosen, rejected, category, history}
- eval:       {instruction, input, output, category, history, check}  (check: exact | refusal | comply;
              the row's own, else the source's, else exact)
`history` holds the turns before the last user message ({role, content}; a system turn first).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from alignpipe.core.config import DATA_FORMATS, EVAL_CHECKS
from alignpipe.data.read import DataError, RowProblem, read_table

# Placeholder inputs found in real Alpaca data that mean "no input".
_NO_INPUT = {"", "noinput", "no input", "<noinput>", "<no input>", "none", "n/a", "null", "<none>", "no_input"}
FORMATS = DATA_FORMATS  # by kind: the schema's choices, each with its normaliser in NORMALISERS below
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}


# ---------------------------------------------------------------------------------------------
# Format detection


def detect_format(kind: str, records: list[Any], path: str) -> str:
    """The format of a file's records for a stage kind (sft, eval, preference), from its fields."""
    keys: set[str] = set()
    for rec in records[:200]:
        if isinstance(rec, dict):
            keys.update(k for k, v in rec.items() if v is not None)
    sample = next((r["chosen"] for r in records if isinstance(r, dict) and r.get("chosen") is not None), None)
    is_hh = isinstance(sample, str) and "Human:" in sample
    if kind == "preference":
        if "conversations" in keys and {"chosen", "rejected"} <= keys:
            return "sharegpt"
        if {"chosen", "rejected"} <= keys:
            if "prompt" in keys or "instruction" in keys:
                return "explicit"
            if isinstance(sample, list):
                return "implicit"
            if is_hh:
                return "hh"
    elif kind == "eval" and is_hh and not keys & {"messages", "conversations", "instruction", "prompt"}:
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
        f"expected one of: {expected}; set the source's `format:` (e.g. data.{kind}.format={FORMATS[kind][0]})"
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
        raise RowProblem(
            "wrong_type", f"{where}: field '{name}' must be a list of messages, got {type(value).__name__}"
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get(role_key), str) or not isinstance(m.get(content_key), str):
            raise RowProblem(
                "bad_message",
                f"{where}: field '{name}[{i}]' must be an object with string '{role_key}' and '{content_key}'",
            )
        role = _ROLES.get(m[role_key].lower())
        if role is None:
            raise RowProblem(
                "bad_role",
                f"{where}: field '{name}[{i}].{role_key}' is {m[role_key]!r}; "
                "expected user/human, assistant/gpt or system",
            )
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
        raise RowProblem(
            "not_hh", f"{where}: field '{name}' is not an HH transcript (expected it to start with '\\n\\nHuman:')"
        )
    return [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2])
    ]


def _pair_from_turns(where: str, chosen: list[dict], rejected: list[dict]) -> dict:
    """Implicit-prompt pair: the shared turns before the last assistant turn are the prompt."""
    c_answer = _answer(where, chosen[-1], "chosen", "empty_last_turn") if chosen else None
    r_answer = _answer(where, rejected[-1], "rejected", "empty_last_turn") if rejected else None
    if c_answer is None or r_answer is None:
        raise RowProblem("empty_text", f"{where}: field '{'chosen' if c_answer is None else 'rejected'}' has no turns")
    if chosen[:-1] != rejected[:-1]:
        n = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)) - 1)
        raise RowProblem(
            "prefix_mismatch",
            f"{where}: fields 'chosen' and 'rejected' start from different prompts (turn {n + 1} differs); "
            "a pair needs one shared prompt",
        )
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


def _explicit_pair(where: str, rec: dict) -> list[dict]:
    """prompt (text or messages) or instruction/input, with chosen and rejected answers."""
    if isinstance(rec.get("prompt"), list):
        instruction, history = _split_prompt(where, _messages(where, rec["prompt"], "prompt"), "prompt")
        inp = ""
    elif "prompt" in rec and rec.get("instruction") is None:
        instruction, inp, history = _text(where, rec, "prompt"), "", []
    else:
        instruction, inp, history = _text(where, rec, "instruction"), _input(where, rec), []
    return [
        {
            "instruction": instruction,
            "input": inp,
            "history": history,
            "chosen": _completion(where, rec, "chosen"),
            "rejected": _completion(where, rec, "rejected"),
        }
    ]


def _hh_pair(where: str, rec: dict) -> list[dict]:
    chosen = parse_hh(where, _text(where, rec, "chosen"), "chosen")
    return [_pair_from_turns(where, chosen, parse_hh(where, _text(where, rec, "rejected"), "rejected"))]


def _hh_prompt(where: str, rec: dict) -> list[dict]:
    """An HH pair as one single-turn eval row: the first Human turn (a red-team request is the first
    turn), answered by the chosen transcript's first Assistant turn."""
    turns = parse_hh(where, _text(where, rec, "chosen"), "chosen")
    if len(turns) < 2 or [t["role"] for t in turns[:2]] != ["user", "assistant"]:
        raise RowProblem(
            "bad_turns", f"{where}: field 'chosen' must start with a Human turn answered by an Assistant turn"
        )
    for who, turn in zip(("Human", "Assistant"), turns):
        if not turn["content"]:
            raise RowProblem("empty_text", f"{where}: field 'chosen' has an empty first {who} turn")
    return [{"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"], "history": []}]


def _implicit_pair(where: str, rec: dict) -> list[dict]:
    chosen = _messages(where, rec.get("chosen"), "chosen")
    return [_pair_from_turns(where, chosen, _messages(where, rec.get("rejected"), "rejected"))]


def _sharegpt_pair(where: str, rec: dict) -> list[dict]:
    turns = _messages(where, rec.get("conversations"), "conversations", "from", "value")
    instruction, history = _split_prompt(where, turns, "conversations")
    return [
        {
            "instruction": instruction,
            "input": "",
            "history": history,
            "chosen": _completion(where, rec, "chosen"),
            "rejected": _completion(where, rec, "rejected"),
        }
    ]


def _alpaca(where: str, rec: dict) -> list[dict]:
    return [
        {
            "instruction": _text(where, rec, "instruction"),
            "input": _input(where, rec),
            "output": _text(where, rec, "output"),
            "history": [],
        }
    ]


def _messages_row(where: str, rec: dict) -> list[dict]:
    return [_conversation_row(where, _messages(where, rec.get("messages"), "messages"), "messages")]


def _sharegpt_row(where: str, rec: dict) -> list[dict]:
    turns = _messages(where, rec.get("conversations"), "conversations", "from", "value")
    return [_conversation_row(where, turns, "conversations")]


def _prompt_completion(where: str, rec: dict) -> list[dict]:
    prompt = rec.get("prompt")
    if isinstance(prompt, list):
        instruction, history = _split_prompt(where, _messages(where, prompt, "prompt"), "prompt")
    else:
        instruction, history = _text(where, rec, "prompt"), []
    return [
        {"instruction": instruction, "input": "", "output": _completion(where, rec, "completion"), "history": history}
    ]


def _self_instruct(where: str, rec: dict) -> list[dict]:
    """A Self-Instruct task: one row per instance."""
    instruction = _text(where, rec, "instruction")
    instances = rec.get("instances")
    if not isinstance(instances, list) or not instances:
        raise RowProblem("missing_field", f"{where}: field 'instances' must be a non-empty list of {{input, output}}")
    rows = []
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise RowProblem(
                "wrong_type", f"{where}: field 'instances[{i}]' must be an object with 'input' and 'output'"
            )
        rows.append(
            {
                "instruction": instruction,
                "input": _input(where, inst),
                "output": _text(where, inst, "output"),
                "history": [],
            }
        )
    return rows


_SFT_NORMALISERS = {
    "alpaca": _alpaca,
    "messages": _messages_row,
    "sharegpt": _sharegpt_row,
    "prompt_completion": _prompt_completion,
    "self_instruct": _self_instruct,
}
# (kind, format) -> the function turning one record into normalised rows.
NORMALISERS = {
    **{("sft", f): fn for f, fn in _SFT_NORMALISERS.items()},
    **{("eval", f): fn for f, fn in _SFT_NORMALISERS.items()},
    ("eval", "hh"): _hh_prompt,
    ("preference", "explicit"): _explicit_pair,
    ("preference", "implicit"): _implicit_pair,
    ("preference", "hh"): _hh_pair,
    ("preference", "sharegpt"): _sharegpt_pair,
}
# Where the prompt and the answer live in each format, for messages about empty fields.
_PROMPT_FIELD = {"alpaca": "instruction", "self_instruct": "instruction"}
_ANSWER_FIELD = {"alpaca": "output", "self_instruct": "output"}


def normalise(
    kind: str,
    fmt: str,
    where: str,
    rec: Any,
    category: str | None = None,
    category_field: str = "category",
    check: str | None = None,
) -> list[dict]:
    """Normalised rows (usually one; a Self-Instruct task gives one per instance) of a record.
    The category comes from `category_field`, else `category` (the source's), else ""; an eval
    row's check from its `check` field, else `check` (the source's), else exact."""
    if not isinstance(rec, dict):
        raise RowProblem("not_object", f"{where}: a row must be a JSON object, got {type(rec).__name__}")
    rows = NORMALISERS[kind, fmt](where, rec)
    if fmt == "self_instruct":
        category = category or rec.get("motivation_app")
    given = rec.get(category_field)
    if given is not None and not isinstance(given, str):
        raise RowProblem(
            "wrong_type", f"{where}: field '{category_field}' must be a string, got {type(given).__name__}"
        )
    for row in rows:
        if not row["instruction"].strip():
            raise RowProblem("empty_text", f"{where}: field '{_PROMPT_FIELD.get(fmt, 'prompt')}' is empty")
        if kind != "preference" and not row["output"].strip():
            raise RowProblem("empty_text", f"{where}: field '{_ANSWER_FIELD.get(fmt, 'completion')}' is empty")
        if kind == "preference" and " ".join(row["chosen"].split()) == " ".join(row["rejected"].split()):
            raise RowProblem(
                "same_answers",
                f"{where}: 'chosen' and 'rejected' are the same answer, so the pair teaches nothing; "
                "fix the pair, or set data.on_bad_rows=skip to drop such rows",
            )
        row["category"] = given or category or ""
        if kind == "eval":
            row_check = _text(where, rec, "check", required=False, default=check or "exact")
            if row_check not in EVAL_CHECKS:
                raise RowProblem(
                    "bad_value", f"{where}: field 'check' must be one of {', '.join(EVAL_CHECKS)}, got {row_check!r}"
                )
            row["check"] = row_check
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
        return {
            "path": self.path,
            "kind": self.kind,
            "format": self.format,
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "problems": self.problems[:20],
        }


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
        raise DataError(
            f"{path}: format {report.format!r} is not a {kind} format; use one of {', '.join(FORMATS[kind])}"
        )
    rows: list[dict] = []
    for rec, at in zip(records, where):
        try:
            got = normalise(
                kind,
                report.format,
                f"{path}: {at}",
                rec,
                getattr(source, "category", None),
                getattr(source, "category_field", "category"),
                getattr(source, "check", None),
            )
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
        raise DataError(
            f"{path}: every row was dropped as bad ({', '.join(f'{n} {r}' for r, n in report.dropped.items())}); "
            f"first: {report.problems[0]}"
        )
    report.kept = len(rows)
    return rows, report


def load(kind: str, path: str | Path, format: str = "auto") -> list[dict]:
    """All rows of one data file (`sft`, `preference` or `eval`); raises DataError at a bad row."""
    return load_source(kind, SimpleNamespace(path=str(path), format=format, split="train"))[0]
