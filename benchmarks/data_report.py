"""Every file of the real public data: format detected, rows read, kept, dropped by reason, and
the decontamination counts of the Alpaca training rows against the held-out Alpaca rows.

    python benchmarks/data_report.py [--data ../shared/data] [--ngram 13]

Reads with the pipeline's own loaders under `on_bad_rows: skip`, then drops exact duplicates
within each file. Prints a table and a JSON line; skips with a message when the folder is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignpipe import data  # noqa: E402
from alignpipe.data import decontam  # noqa: E402

DEFAULT = ROOT.parent / "shared" / "data"
# (training file, eval file, kind): the pairs a pipeline run would decontaminate
PAIRS = [
    ("alpaca_2k.jsonl", "alpaca_heldout_300.jsonl", "sft"),
    ("hh_harmless_1k.jsonl", "hh_test_300.jsonl", "preference"),
]


def kind_of(path: Path) -> str:
    """preference if the file reads as pairs, else sft (ShareGPT pairs also have `conversations`)."""
    records, _ = data.read_table(path)
    try:
        data.detect_format("preference", records, str(path))
        return "preference"
    except data.DataError:
        return "sft"


def file_row(path: Path) -> dict:
    started = time.perf_counter()
    kind = kind_of(path)
    rows, report = data.load_source(kind, path, on_bad_rows="skip")
    unique = data.drop_duplicates(rows)
    if len(rows) - len(unique):
        report.dropped["duplicate"] += len(rows) - len(unique)
    return {
        "file": path.name,
        "kind": kind,
        "format": report.format,
        "read": report.read,
        "kept": len(unique),
        "dropped": dict(report.dropped),
        "seconds": round(time.perf_counter() - started, 3),
    }


def contamination(folder: Path, train: str, evals: str, kind: str, n: int) -> dict:
    rows = data.load_source(kind, folder / train, on_bad_rows="skip")[0]
    eval_rows = data.load_source("eval" if kind == "sft" else "preference", folder / evals, on_bad_rows="skip")[0]
    hits = decontam.find(rows, {evals: eval_rows}, n)
    return {
        "train": train,
        "eval": evals,
        "ngram": n,
        "train_rows": len(rows),
        "eval_rows": len(eval_rows),
        "exact": sum(h[2] == "exact" for h in hits),
        "ngram_only": sum(h[2] == "ngram" for h in hits),
        "examples": [f"{rows[i]['_at']}: {how}: {text[:70]!r}" for i, _, how, text in hits[:3]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--ngram", type=int, default=13)
    a = ap.parse_args(argv)
    if not a.data.is_dir():
        print(f"skipped: {a.data} is absent (the real public data lives beside the project, not in it)")
        return 0
    files = sorted(p for p in a.data.iterdir() if p.suffix in (".json", ".jsonl", ".parquet", ".csv"))
    table = [file_row(p) for p in files]
    head = ["file", "kind", "format", "read", "kept", "dropped by reason", "s"]
    lines = [head] + [
        [
            r["file"],
            r["kind"],
            r["format"],
            str(r["read"]),
            str(r["kept"]),
            ", ".join(f"{n} {k}" for k, n in sorted(r["dropped"].items())) or "-",
            f"{r['seconds']:.2f}",
        ]
        for r in table
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(c.rjust(w) if c.replace(".", "").isdigit() else c.ljust(w) for c, w in zip(line, widths)))
    pairs = [
        contamination(a.data, t, e, k, a.ngram)
        for t, e, k in PAIRS
        if (a.data / t).is_file() and (a.data / e).is_file()
    ]
    for c in pairs:
        print(
            f"\ndecontamination {c['train']} ({c['train_rows']} rows) vs {c['eval']} ({c['eval_rows']} rows), {c['ngram']}-grams: "  # noqa: E501
            f"{c['exact']} exact, {c['ngram_only']} n-gram only, {c['exact'] + c['ngram_only']} rows would be removed"
        )
        for ex in c["examples"]:
            print(f"  {ex}")
    print(json.dumps({"files": table, "decontamination": pairs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
