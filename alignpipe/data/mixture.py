"""A stage's training rows under the config's data policy: mixture weights, held-out categories,
refusal-row mixing, dedup, decontamination against every eval set, and the validation split."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

from alignpipe.data.decontam import decontaminate
from alignpipe.data.formats import load_source
from alignpipe.data.read import DataError


def rows_digest(rows: list[dict]) -> str:
    """Content digest of normalised rows (what a stage trains on, whatever the source)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, sort_keys=True).encode())
    return h.hexdigest()


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
        fields = [
            " ".join(str(r.get(k, "")).lower().split())
            for k in ("instruction", "input", "output", "chosen", "rejected")
        ]
        key = hashlib.sha256(json.dumps(fields + [r.get("history")]).encode()).hexdigest()
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def eval_sets(cfg) -> dict[str, list[dict]]:
    """Every evaluation file the config names, by path, whole (a training row overlapping any of its
    rows is contaminated, whatever slice is scored): prompts (eval) and pairs (eval_preference)."""
    out = {}
    for kind, entry in (("eval", cfg.data.eval), ("preference", cfg.data.eval_preference)):
        for src in sources(entry):
            out[src.path] = load_source(kind, src, "skip")[0]
    return out


def eval_rows(cfg, name: str = "eval") -> list[dict]:
    """Rows of every source of `data.eval` (prompts) or `data.eval_preference` (pairs): of each, the
    fixed slice offset .. offset+max_rows in file order (the suite never moves with the seed)."""
    kind = "eval" if name == "eval" else "preference"
    out = []
    for src in sources(getattr(cfg.data, name)):
        rows = load_source(kind, src, cfg.data.on_bad_rows)[0][src.offset :]
        out.extend(rows[: src.max_rows] if src.max_rows is not None else rows)
    return out


def seen_categories(cfg) -> set[str]:
    """Categories of the rows SFT trains on (held-out categories never are)."""
    return {r["category"] for r in stage_rows(cfg, "sft")[0]}


def stage_rows(cfg, kind: str, extra: list | None = None, evals: dict | None = None) -> tuple[list[dict], dict]:
    """(training rows, report) of a stage (`sft` or `preference`) under the config's data policy.

    Per source: read and validate (on_bad_rows), skip its first `offset` rows, drop held-out
    categories; across sources: drop exact duplicates, decontaminate against every eval set (refusal
    rows too); then take each source's mixture share (weight, max_rows) and (SFT) mix in refusal rows
    at data.safety.fraction.
    Raises DataError on a bad row (fail) or on contamination (decontaminate: fail).
    """
    d = cfg.data
    heldout = set(d.heldout_categories)
    per_source = []
    for src in sources(getattr(d, kind)) + list(extra or []):
        got, rep = load_source(kind, src, d.on_bad_rows)
        got = got[getattr(src, "offset", 0) :]
        kept = [r for r in got if r["category"] not in heldout]
        if len(got) - len(kept):
            rep.dropped["heldout_category"] += len(got) - len(kept)
        per_source.append((src, kept, rep))
    refusals: list[dict] = []
    if kind == "sft" and d.safety.path and d.safety.fraction > 0:
        refusals = [
            dict(r, _pool="safety")
            for r in load_source("sft", d.safety, d.on_bad_rows)[0]
            if not d.safety.category or r["category"] == d.safety.category
        ]
        if not refusals:
            raise DataError(
                f"{d.safety.path}: no refusal rows (category {d.safety.category!r}); check data.safety.category"
            )
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
        clean, report["decontamination"] = decontaminate(everything, evals, d.ngram, d.decontaminate)
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
        raise DataError(
            f"data.{kind}: no training rows left after the data policy "
            f"(dropped: {[s['dropped'] for s in report['sources']]})"
        )
    return out, report


def clean_generated(cfg, rows: list[dict], source: str, hint: str = "") -> tuple[list[dict], dict]:
    """(rows kept, report) of rows a stage wrote (a teacher's answers), under the data policy of
    read rows: empty answers dropped, exact duplicates dropped (data.dedup), rows overlapping an
    eval set removed or refused (data.decontaminate)."""
    d = cfg.data
    dropped = {"empty_answer": 0, "duplicate": 0, "contaminated": 0}
    kept = [dict(r, _src=source, _at=f"row {i + 1}") for i, r in enumerate(rows) if str(r["output"]).strip()]
    dropped["empty_answer"] = len(rows) - len(kept)
    if d.dedup:
        unique = drop_duplicates(kept)
        dropped["duplicate"], kept = len(kept) - len(unique), unique
    report: dict[str, Any] = {"source": source, "generated": len(rows)}
    if d.decontaminate != "off":
        clean, report["decontamination"] = decontaminate(kept, eval_sets(cfg), d.ngram, d.decontaminate)
        dropped["contaminated"], kept = len(kept) - len(clean), clean
    report.update(dropped=dropped, rows=len(kept))
    if not kept:
        raise DataError(f"{source}: no usable generated rows left (dropped: {dropped}){hint}")
    return [{k: v for k, v in r.items() if k not in ("_src", "_at")} for r in kept], report


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


@dataclass
class TrainingRows:
    """A training stage's rows: train and validation split, the data report, the content digest."""

    train: list[dict]
    validation: list[dict]
    report: dict
    digest: str


def training_rows(cfg, kind: str, extra: list | None = None) -> TrainingRows:
    """`stage_rows` split into train and the hashed-out validation rows (`data.validation_rows`)."""
    rows, report = stage_rows(cfg, kind, extra)
    train, validation = split_validation(rows, cfg.data.validation_rows)
    return TrainingRows(train, validation, report, rows_digest(rows))
