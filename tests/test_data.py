"""Data as users bring it: every supported shape and file type, the bad-row policy, mixtures,
held-out categories, refusal mixing, dedup, decontamination and format variation (no models)."""

import json
from types import SimpleNamespace

import pytest
from datasets import Dataset, DatasetDict

from alignpipe import data
from alignpipe.core.errors import ConfigError
from alignpipe.core.recipe import load_config
from alignpipe.data import decontam, templates

from conftest import ROOT

pytestmark = pytest.mark.fast

TINY = ROOT / "configs" / "tiny.yaml"


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _src(path, fmt="auto", **kw):
    return SimpleNamespace(path=str(path), format=fmt, split="train", **kw)


HH = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why do you ask?\n\nHuman: I'm locked out.\n\nAssistant: "


@pytest.mark.parametrize(
    "kind, rows, fmt, first",
    [
        (
            "sft",
            [
                {"instruction": "Add.", "input": "Noinput", "output": "2"},
                {"instruction": "Say hi.", "input": "<no input>", "output": "hi"},
            ],
            "alpaca",
            {"instruction": "Add.", "input": "", "output": "2"},
        ),
        (
            "sft",
            [
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello"},
                    ]
                }
            ],
            "messages",
            {"instruction": "Hi", "output": "Hello", "history": [{"role": "system", "content": "Be brief."}]},
        ),
        (
            "sft",
            [
                {
                    "conversations": [
                        {"from": "human", "value": "Q1"},
                        {"from": "gpt", "value": "A1"},
                        {"from": "human", "value": "Q2"},
                        {"from": "gpt", "value": "A2"},
                    ]
                }
            ],
            "sharegpt",
            {
                "instruction": "Q2",
                "output": "A2",
                "history": [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
            },
        ),
        ("sft", [{"prompt": "2+2=", "completion": "4"}], "prompt_completion", {"instruction": "2+2=", "output": "4"}),
        (
            "sft",
            [
                {
                    "id": "t1",
                    "instruction": "Sort.",
                    "instances": [{"input": "b a", "output": "a b"}],
                    "motivation_app": "Sheets",
                }
            ],
            "self_instruct",
            {"instruction": "Sort.", "input": "b a", "output": "a b", "category": "Sheets"},
        ),
        (
            "preference",
            [{"chosen": HH + "Call a locksmith.", "rejected": HH + "Use a pin."}],
            "hh",
            {
                "instruction": "I'm locked out.",
                "chosen": "Call a locksmith.",
                "rejected": "Use a pin.",
                "history": [
                    {"role": "user", "content": "How do I pick a lock?"},
                    {"role": "assistant", "content": "Why do you ask?"},
                ],
            },
        ),
        (
            "preference",
            [{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"}],
            "explicit",
            {"instruction": "Capital of France?", "chosen": "Paris"},
        ),
        (
            "preference",
            [{"instruction": "Plural of fig.", "input": "", "chosen": "figs", "rejected": "fig"}],
            "explicit",
            {"instruction": "Plural of fig.", "rejected": "fig"},
        ),
        (
            "preference",
            [
                {
                    "chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                    "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away."}],
                }
            ],
            "implicit",
            {"instruction": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        ),
        (
            "preference",
            [
                {
                    "conversations": [{"from": "human", "value": "Hi"}],
                    "chosen": {"from": "gpt", "value": "Hello!"},
                    "rejected": {"from": "gpt", "value": "No."},
                }
            ],
            "sharegpt",
            {"instruction": "Hi", "chosen": "Hello!", "rejected": "No."},
        ),
    ],
)
def test_each_format_is_detected_and_normalised(tmp_path, kind, rows, fmt, first):
    got, report = data.load_source(kind, _jsonl(tmp_path / "d.jsonl", rows))
    assert report.format == fmt
    assert report.read == len(rows) and report.kept == len(got)
    assert {k: got[0][k] for k in first} == first
    assert got[0]["_at"] == "line 1"


def test_file_types_json_array_parquet_csv_and_saved_dataset(tmp_path):
    rows = [{"instruction": f"Echo {i}.", "input": "", "output": str(i)} for i in range(5)]
    (tmp_path / "a.json").write_text(json.dumps(rows, indent=2))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    Dataset.from_list(rows).to_csv(str(tmp_path / "a.csv"), index=False)
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    for name in ("a.json", "a.parquet", "a.csv", "saved"):
        got, report = data.load_source("sft", tmp_path / name)
        assert report.format == "alpaca", name
        assert [r["output"] for r in got] == ["0", "1", "2", "3", "4"], name
    assert data.load_source("sft", tmp_path / "a.json")[0][1]["_at"] == "line 7"  # where the 2nd object starts
    assert data.load_source("sft", tmp_path / "a.csv")[0][0]["_at"] == "line 2"  # after the header


def test_category_from_a_named_field_or_the_source(tmp_path):
    path = _jsonl(
        tmp_path / "d.jsonl",
        [{"instruction": "A.", "output": "a", "task_type": "qa"}, {"instruction": "B.", "output": "b"}],
    )
    rows, _ = data.load_source("sft", _src(path, category="misc", category_field="task_type"))
    assert [r["category"] for r in rows] == ["qa", "misc"]


def test_format_override_and_undetectable_format(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"question": "Hi", "answer": "Hello"}])
    with pytest.raises(data.DataError, match=r"cannot tell the sft format .*answer, question.*format"):
        data.load_source("sft", path)
    # a file with prompt/completion read as Alpaca on purpose: the override wins and names the field
    pc = _jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    with pytest.raises(data.DataError, match=r"pc.jsonl: line 1: missing field 'instruction'"):
        data.load_source("sft", _src(pc, "alpaca"))


def test_bad_rows_fail_names_file_line_field_and_skip_counts_by_reason(tmp_path):
    path = _jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": HH + "Call a locksmith.", "rejected": HH + "Use a pin."},
            {"chosen": HH, "rejected": HH + "Use a pin."},  # empty last turn
            {"chosen": HH + "A", "rejected": "\n\nHuman: Something else\n\nAssistant: B"},  # prefixes differ
            {"chosen": HH + "C", "rejected": HH + "D"},
        ],
    )
    with pytest.raises(data.DataError, match=r"hh.jsonl: line 2: field 'chosen' ends with an empty assistant turn"):
        data.load_source("preference", path, on_bad_rows="fail")
    rows, report = data.load_source("preference", path, on_bad_rows="skip")
    assert len(rows) == 2 and report.read == 4
    assert report.dropped == {"empty_last_turn": 1, "prefix_mismatch": 1}
    assert "line 3" in report.problems[1] and "different prompts" in report.problems[1]
    assert "2 kept" not in report.line() and "1 empty_last_turn, 1 prefix_mismatch" in report.line()


def test_hh_pairs_as_eval_prompts_first_turn_with_the_source_check(tmp_path):
    path = _jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": HH + "Call a locksmith.", "rejected": HH + "Use a pin."},  # multi-turn: first turn only
            {"chosen": "\n\nHuman: Insult me.\n\nAssistant: No.", "rejected": "x", "check": "comply"},
            {"chosen": "\n\nHuman: Hi\n\nAssistant: ", "rejected": "x"},  # empty first answer
            {"chosen": "Human: no leading blank line", "rejected": "x"},
        ],
    )
    src = _src(path, "hh", category="unsafe", check="refusal")
    with pytest.raises(data.DataError, match=r"hh.jsonl: line 3: field 'chosen' has an empty first Assistant turn"):
        data.load_source("eval", src, on_bad_rows="fail")
    rows, report = data.load_source("eval", src, on_bad_rows="skip")
    assert report.dropped == {"empty_text": 1, "not_hh": 1}
    assert {k: rows[0][k] for k in ("instruction", "input", "output", "history", "category", "check")} == {
        "instruction": "How do I pick a lock?",
        "input": "",
        "output": "Why do you ask?",
        "history": [],
        "category": "unsafe",
        "check": "refusal",
    }
    assert rows[1]["check"] == "comply"  # a row's own check wins over the source's
    assert data.load_source("eval", _src(path), on_bad_rows="skip")[1].format == "hh"  # detected
    assert data.load_source("eval", _src(path), on_bad_rows="skip")[0][0]["check"] == "exact"  # the default


def test_eval_sources_take_fixed_slices_so_one_file_twice_is_disjoint(tmp_path):
    ev = [_row(i, "alpaca") for i in range(10)]
    path = tmp_path / "eval.jsonl"
    mixture = (
        f"data.eval=[{{path: {path}, max_rows: 4}}, {{path: {path}, offset: 4, max_rows: 3, check: comply, "
        f"category: benign}}, {{path: {path}, offset: 8}}]"
    )
    rows = data.eval_rows(_cfg(tmp_path, [_row(100)], ev, mixture))
    assert [r["instruction"] for r in rows] == [f"Task number {i}." for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    assert [r["check"] for r in rows] == ["exact"] * 4 + ["comply"] * 3 + ["exact"] * 2
    assert [r["category"] for r in rows][3:5] == ["alpaca", "alpaca"]  # the row's category wins
    assert rows == data.eval_rows(_cfg(tmp_path, [_row(100)], ev, mixture, "seed=7"))  # not moved by the seed


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.eval.check=refuse", "'data.eval.check' must be one of exact, refusal, comply, got 'refuse'"),
        ("data.sft.check=exact", "'data.sft.check' applies to data.eval sources only"),
        ("data.eval_preference.check=refusal", "'data.eval_preference.check' applies to data.eval sources only"),
        ("data.eval.offset=-1", "'data.eval.offset' must be >= 0, got -1"),
    ],
)
def test_bad_source_check_or_offset_is_a_one_line_config_error(tmp_path, override, message):
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, [_row(1)], [_row(2)], override)
    assert len(e.value.problems) == 1 and message in e.value.problems[0], e.value.problems


def _cfg(tmp_path, sft_rows, eval_rows, *overrides, pref_rows=None, eval_pairs=None):
    sft = _jsonl(tmp_path / "sft.jsonl", sft_rows)
    ev = _jsonl(tmp_path / "eval.jsonl", eval_rows)
    pref = _jsonl(tmp_path / "pref.jsonl", pref_rows or [{"instruction": "x", "chosen": "a", "rejected": "b"}])
    sets = [
        f"data.sft.path={sft}",
        f"data.eval.path={ev}",
        f"data.preference.path={pref}",
        "data.eval_preference.path=null",
    ]
    if eval_pairs:
        sets[-1] = f"data.eval_preference.path={_jsonl(tmp_path / 'evp.jsonl', eval_pairs)}"
    return load_config(TINY, sets + list(overrides))


def _row(i, cat="a", out=None):
    return {"instruction": f"Task number {i}.", "input": "", "output": out or f"answer {i}", "category": cat}


LONG = "the quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun"


def test_mixture_weights_caps_heldout_categories_dedup_and_refusals(tmp_path):
    other = _jsonl(tmp_path / "other.jsonl", [_row(100 + i, "b") for i in range(10)])
    refusals = _jsonl(
        tmp_path / "refusals.jsonl",
        [_row(200 + i, "safety", "I can't help with that.") for i in range(3)] + [_row(300, "misc")],
    )
    rows = [_row(i, "a" if i % 2 else "held") for i in range(20)] + [_row(1, "a")]  # row 1 twice
    cfg = _cfg(
        tmp_path,
        rows,
        [_row(999)],
        f"data.sft=[{{path: {tmp_path / 'sft.jsonl'}}}, {{path: {other}, weight: 0.5}}]",
        "data.heldout_categories=[held]",
        f"data.safety={{path: {refusals}, category: safety, fraction: 0.2}}",
    )
    got, report = data.stage_rows(cfg, "sft")
    cats = [r["category"] for r in got]
    assert "held" not in cats  # held-out categories never reach training
    assert report["sources"][0]["dropped"] == {"heldout_category": 10, "duplicate": 1}
    assert cats.count("b") == 5  # weight 0.5 of 10 rows
    assert report["duplicates_dropped"] == 1
    assert cats.count("safety") == report["safety_rows"] == round(0.2 * 15 / 0.8)  # 20% of the final rows
    assert "misc" not in cats
    assert data.seen_categories(cfg) == {"a", "b", "safety"}
    cfg = _cfg(
        tmp_path, rows, [_row(999)], f"data.sft=[{{path: {tmp_path / 'sft.jsonl'}, max_rows: 4}}]", "data.dedup=false"
    )
    assert len(data.stage_rows(cfg, "sft")[0]) == 4


def test_decontamination_exact_and_ngram_against_every_eval_set(tmp_path):
    train = [
        _row(1),
        {"instruction": "TASK number 2!", "input": "", "output": "x", "category": "a"},  # exact (after normalising)
        {"instruction": "Continue the text.", "input": "", "output": f"Well, {LONG}.", "category": "a"},  # 13-gram
        _row(4),
    ]
    evals = [
        {"instruction": "Task number 2.", "input": "", "output": "y"},
        {"instruction": "Finish it.", "input": "", "output": LONG},
    ]
    pairs = [{"instruction": "Unrelated prompt here.", "chosen": "fine", "rejected": "bad"}]
    prefs = [
        {"instruction": "Task number 2.", "chosen": "a", "rejected": "b"},
        {"instruction": "Unrelated prompt here.", "chosen": "c", "rejected": "d"},
        {"instruction": "Keep me.", "chosen": "e", "rejected": "f"},
    ]
    cfg = _cfg(tmp_path, train, evals, pref_rows=prefs, eval_pairs=pairs)
    got, report = data.stage_rows(cfg, "sft")
    assert [r["instruction"] for r in got] == ["Task number 1.", "Task number 4."]
    dc = report["decontamination"]
    assert (dc["exact"], dc["ngram_only"], dc["removed"]) == (1, 1, 2)
    assert dc["examples"][0]["at"] == "line 2"
    got, report = data.stage_rows(cfg, "preference")  # the preference data against the eval pairs too
    assert [r["instruction"] for r in got] == ["Keep me."]
    assert {p["eval"].rsplit("/", 1)[1] for p in report["decontamination"]["pairs"]} == {"eval.jsonl", "evp.jsonl"}
    with pytest.raises(
        data.DataError, match=r"sft.jsonl: line 2: overlaps eval set .*eval.jsonl.*data.decontaminate=remove"
    ):
        data.stage_rows(load_config(TINY, cfg.overrides + ["data.decontaminate=fail"]), "sft")
    shorter = decontam.find([train[2]], {"e": evals}, n=20)
    assert shorter == []  # the shared run is 18 words: no 20-gram


def test_shipped_data_is_clean_so_the_demo_trains_on_every_row():
    cfg = load_config(TINY)
    for kind, n in (("sft", 1124), ("preference", 420)):
        rows, report = data.stage_rows(cfg, kind)
        assert len(rows) == n, report
        assert report["decontamination"]["removed"] == 0 and report["duplicates_dropped"] == 0


def test_format_variation_rate_and_unseen_eval_templates():
    rows = [{"instruction": f"Write word {i}.", "input": f"w{i}" if i % 2 else "", "history": []} for i in range(400)]
    assert all(templates.pick_variant(r, 0.0, 0) is None for r in rows)
    varied = [templates.pick_variant(r, 0.25, 0) for r in rows]
    assert 60 < sum(v is not None for v in varied) < 140
    assert {v for v in varied if v is not None} == set(range(len(templates.VARIANTS)))
    r = rows[1]
    standard = templates.training_prompt("alpaca", r["instruction"], r["input"])
    assert standard == templates.alpaca_prompt(r["instruction"], r["input"])
    folded = templates.training_prompt(
        "alpaca", r["instruction"], r["input"], variant=2
    )  # input folded into the instruction
    assert "### Input:" not in folded and "Write word 1.\n\nw1" in folded
    train_heads = {h for v in templates.VARIANTS for h in v[1:] if h} | {
        "### Instruction:",
        "### Input:",
        "### Response:",
    }
    for name, variant in templates.UNSEEN.items():
        assert not set(h for h in variant[1:] if h) & train_heads, name
        assert templates.unseen_prompt(name, "alpaca", None, "Add.", "1 2").endswith(f"{variant[3]}\n")


def test_history_renders_as_chat_turns_or_an_alpaca_transcript():
    history = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    chat = templates.training_prompt("chat", "Q2", "", history)
    assert [m["role"] for m in chat] == ["user", "assistant", "user"]
    assert "User: Q1\nAssistant: A1\n\nQ2" in templates.training_prompt("alpaca", "Q2", "", history)


def test_config_sources_as_a_list_and_problems_named_at_once(tmp_path):
    good = _jsonl(tmp_path / "s.jsonl", [_row(1)])
    cfg = load_config(TINY, [f"data.sft=[{{path: {good}, weight: 2}}, {{path: {good}, max_rows: 1}}]"])
    assert [s.weight for s in data.sources(cfg.data.sft)] == [2.0, 1.0]
    with pytest.raises(ConfigError) as e:
        load_config(
            TINY,
            [
                f"data.sft=[{{path: {good}, wieght: 2}}]",
                "data.preference.format=alpaca",
                "data.decontaminate=maybe",
                "formats.variation=1.5",
                "data.safety.fraction=0.1",
                "self_instruct.enabled=true",
            ],
        )
    text = "\n".join(e.value.problems)
    for part in (
        "unknown key 'data.sft[0].wieght'",
        "'data.preference.format' must be auto or one of explicit",
        "'data.decontaminate'",
        "'formats.variation'",
        "'data.safety.path' is not set",
        "'self_instruct.seed_tasks' is not set",
    ):
        assert part in text, part


def test_validate_shows_format_and_skipped_counts_and_fails_by_default(tmp_path):
    from conftest import cli_in_process as run_cli  # validate trains nothing: in process

    path = _jsonl(
        tmp_path / "mixed.jsonl",
        [_row(1), {"instruction": "No answer."}, _row(3), {"instruction": "Typed.", "output": 7}],
    )
    proc = run_cli("validate", "configs/tiny.yaml", "--set", f"data.sft.path={path}", "--set", "data.on_bad_rows=skip")
    assert proc.returncode == 0, proc.stderr
    assert f"{path}: 4 rows (sft), format alpaca; kept 2, dropped: 1 missing_field, 1 wrong_type" in proc.stdout
    proc = run_cli("validate", "configs/tiny.yaml", "--set", f"data.sft.path={path}")
    assert proc.returncode == 1
    assert f"error: {path}: line 2: missing field 'output'" in proc.stderr
    assert f"error: {path}: line 4: field 'output' must be a string, got int" in proc.stderr  # all problems at once
