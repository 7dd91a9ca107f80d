"""Every file of the real public data in ../shared/data loads with the right format detected, and
`alignpipe validate` reports each one's format and counts; skipped when the folder is absent."""

import pytest

from alignpipe import data

from conftest import ROOT, run_cli

SHARED = ROOT.parent / "shared" / "data"

pytestmark = [
    pytest.mark.fast,
    pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent: real-data checks skipped"),
]

# file: (kind, format, rows read, rows kept under on_bad_rows=skip)
EXPECTED = {
    "alpaca_2k.jsonl": ("sft", "alpaca", 2000, 2000),
    "alpaca_heldout_300.jsonl": ("eval", "alpaca", 300, 300),
    "hh_harmless_1k.jsonl": (
        "preference",
        "hh",
        1000,
        995,
    ),  # 3 end with an empty reply, 2 pairs start from different prompts
    "hh_test_300.jsonl": ("preference", "hh", 300, 300),
    "oasst_pairs_messages.jsonl": ("preference", "implicit", 207, 207),
    "sharegpt_dpo_300.json": ("preference", "sharegpt", 300, 300),
    "selfinstruct_seed_tasks.jsonl": ("sft", "self_instruct", 175, 175),
    "selfinstruct_user_oriented_252.jsonl": ("sft", "self_instruct", 252, 252),
}


def test_every_shared_file_is_known():
    present = {p.name for p in SHARED.iterdir() if p.suffix in (".json", ".jsonl")}
    assert present == set(EXPECTED), "a new file in ../shared/data: add it to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_file_loads_with_its_format_detected(name):
    kind, fmt, read, kept = EXPECTED[name]
    rows, report = data.load_source(kind, SHARED / name, on_bad_rows="skip")
    assert (report.format, report.read, report.kept) == (fmt, read, kept), report.line()
    assert all(r["instruction"].strip() for r in rows)
    if name.startswith("hh_harmless"):
        assert report.dropped == {"empty_last_turn": 3, "prefix_mismatch": 2}
        with pytest.raises(data.DataError, match=r"hh_harmless_1k.jsonl: line \d+: field '(chosen|rejected)'"):
            data.load_source(kind, SHARED / name, on_bad_rows="fail")
    if name == "alpaca_2k.jsonl":  # "Noinput"-style placeholders read as no input
        assert not any(r["input"].strip().lower() in ("noinput", "<no input>", "no input") for r in rows)
    if name == "selfinstruct_user_oriented_252.jsonl":  # the app is the category (71 of them)
        assert len({r["category"] for r in rows}) == 71


def test_validate_reports_format_and_counts_of_each_real_file(state_dir):
    s = SHARED
    proc = run_cli(
        "validate",
        "configs/tiny.yaml",
        "--set",
        f"data.sft=[{{path: {s / 'alpaca_2k.jsonl'}}}, {{path: {s / 'selfinstruct_user_oriented_252.jsonl'}, weight: 0.5}}]",  # noqa: E501
        "--set",
        f"data.preference=[{{path: {s / 'hh_harmless_1k.jsonl'}}}, {{path: {s / 'oasst_pairs_messages.jsonl'}}}, {{path: {s / 'sharegpt_dpo_300.json'}}}]",  # noqa: E501
        "--set",
        f"data.eval=[{{path: {s / 'alpaca_heldout_300.jsonl'}}}, {{path: data/eval.jsonl}}]",
        "--set",
        f"data.eval_preference=[{{path: {s / 'hh_test_300.jsonl'}}}, {{path: data/eval_preference.jsonl}}]",
        "--set",
        f"self_instruct.seed_tasks={s / 'selfinstruct_seed_tasks.jsonl'}",
        "--set",
        "data.on_bad_rows=skip",
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for name, (kind, fmt, read, kept) in EXPECTED.items():
        line = next(line for line in out.splitlines() if line.startswith(f"{s / name}:"))
        assert f"{read} rows" in line and f"format {fmt}" in line and f"kept {kept}" in line, line
    assert "3 empty_last_turn, 2 prefix_mismatch" in out
    assert "sft: " in out and "1 contaminated (0 exact, 1 13-gram)" in out  # alpaca_2k vs alpaca_heldout_300
    assert "preference: " in out and "5 duplicates dropped" in out  # the ShareGPT file's exact duplicates


def test_real_eval_mixture_alpaca_exact_benign_comply_and_hh_refusal():
    """The real-model recipe's suite: Alpaca answers (exact), other Alpaca prompts as benign
    (comply), HH red-team first turns (refusal); the same file twice gives disjoint rows."""
    from alignpipe.core.recipe import load_config

    s = SHARED
    cfg = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            f"data.eval=[{{path: {s / 'alpaca_heldout_300.jsonl'}, max_rows: 100, category: alpaca}}, "
            f"{{path: {s / 'alpaca_heldout_300.jsonl'}, offset: 100, max_rows: 50, check: comply, category: benign}}, "
            f"{{path: {s / 'hh_test_300.jsonl'}, format: hh, check: refusal, max_rows: 60, category: unsafe}}]",
        ],
    )
    rows = data.eval_rows(cfg)
    assert [(r["category"], r["check"]) for r in rows] == (
        [("alpaca", "exact")] * 100 + [("benign", "comply")] * 50 + [("unsafe", "refusal")] * 60
    )
    assert {r["_at"] for r in rows[:100]}.isdisjoint(r["_at"] for r in rows[100:150])
    assert [r["_at"] for r in rows[100:102]] == ["line 101", "line 102"]
    unsafe = rows[150:]
    assert all(r["instruction"].strip() and r["output"].strip() and r["history"] == [] for r in unsafe)
    assert not any("Human:" in r["instruction"] or "Assistant:" in r["instruction"] for r in unsafe)
    _, report = data.load_source("eval", s / "hh_test_300.jsonl", on_bad_rows="fail")
    assert (report.format, report.kept) == ("hh", 300)  # detected; every first turn parses
