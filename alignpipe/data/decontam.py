"""Decontamination: training rows that overlap an evaluation set, found and removed (or reported).

A training row is contaminated by an eval row when
- exact: their prompts (history, instruction, input) are equal after normalising case,
  punctuation and whitespace; or
- ngram: a field of the training row (its prompt, or one of its answers) shares a word n-gram
  (default 13, as in GPT-3's contamination study) with the eval row's prompt or reference
  answer. N-grams never span two fields, so a stock reply after a similar prompt is no match.
"""

from __future__ import annotations

import re
from collections import Counter

from alignpipe.data.read import DataError

_WORD = re.compile(r"[^\W_]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _prompt(row: dict) -> str:
    history = " ".join(m["content"] for m in row.get("history") or [])
    return " ".join(words(f"{history} {row['instruction']} {row['input']}"))


def _fields(row: dict, keys=("output", "chosen", "rejected")) -> list[list[str]]:
    """The row's word lists: its prompt, then each answer field it has."""
    return [_prompt(row).split()] + [words(row[k]) for k in keys if row.get(k)]


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def _eval_index(evals: dict[str, list[dict]], n: int):
    exact: dict[str, str] = {}
    grams: dict[tuple, str] = {}
    for name, rows in evals.items():
        for r in rows:
            exact.setdefault(_prompt(r), name)
            for field in _fields(r, ("output", "chosen")):
                for g in ngrams(field, n):
                    grams.setdefault(g, name)
    return exact, grams


def find(rows: list[dict], evals: dict[str, list[dict]], n: int = 13) -> list[tuple[int, str, str, str]]:
    """(row index, eval set, 'exact' or 'ngram', the matching text) of each contaminated row."""
    exact, grams = _eval_index(evals, n)
    hits = []
    for i, r in enumerate(rows):
        prompt = _prompt(r)
        if prompt in exact:
            hits.append((i, exact[prompt], "exact", prompt[:200]))
            continue
        match = next((g for field in _fields(r) for g in ngrams(field, n) if g in grams), None)
        if match:
            hits.append((i, grams[match], "ngram", " ".join(match)))
    return hits


def decontaminate(
    rows: list[dict], evals: dict[str, list[dict]], n: int = 13, policy: str = "remove"
) -> tuple[list[dict], dict]:
    """(rows kept, report). policy remove: drop contaminated rows; fail: raise DataError naming them."""
    hits = find(rows, evals, n)
    counts: Counter = Counter((rows[i].get("_src", "?"), name, how) for i, name, how, _ in hits)
    report = {
        "ngram": n,
        "eval_sets": {name: len(r) for name, r in evals.items()},
        "pairs": [{"train": t, "eval": e, "match": how, "rows": c} for (t, e, how), c in sorted(counts.items())],
        "exact": sum(1 for h in hits if h[2] == "exact"),
        "ngram_only": sum(1 for h in hits if h[2] == "ngram"),
        "removed": len(hits) if policy == "remove" else 0,
        "examples": [
            {"train": rows[i].get("_src"), "at": rows[i].get("_at"), "eval": name, "match": how, "text": text}
            for i, name, how, text in hits[:10]
        ],
    }
    if hits and policy == "fail":
        i, name, how, text = hits[0]
        raise DataError(
            f"{rows[i].get('_src')}: {rows[i].get('_at')}: overlaps eval set {name} ({how} match: {text[:80]!r}); "
            f"{len(hits)} training rows are contaminated: remove them, or set data.decontaminate=remove"
        )
    bad = {i for i, *_ in hits}
    kept = [r for i, r in enumerate(rows) if i not in bad] if policy == "remove" else rows
    return kept, report
