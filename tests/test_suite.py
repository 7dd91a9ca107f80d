"""Tests for the default data suite (alignpipe.data.demo) and the answer graders (alignpipe.evaluation.graders)."""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alignpipe.data import demo  # noqa: E402
from alignpipe.evaluation import graders  # noqa: E402

pytestmark = pytest.mark.fast

DATA = ROOT / "data"
FILES = ["sft.jsonl", "safety_sft.jsonl", "preference.jsonl", "eval.jsonl", "eval_preference.jsonl"]
KEYS = {
    "sft.jsonl": ["instruction", "input", "output", "category"],
    "safety_sft.jsonl": ["instruction", "input", "output", "category"],
    "preference.jsonl": ["instruction", "input", "chosen", "rejected", "category", "rejected_kind"],
    "eval.jsonl": ["instruction", "input", "output", "category", "check"],
    "eval_preference.jsonl": ["instruction", "input", "chosen", "rejected", "category", "rejected_kind"],
}


def load(name):
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def rows():
    return {name: load(name) for name in FILES}


def prompts(file_rows):
    return {(r["instruction"], r["input"]) for r in file_rows}


def test_committed_files_match_fresh_generation(tmp_path):
    counts = demo.write_suite(tmp_path, seed=0)
    assert sorted(counts) == sorted(FILES)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), name
        assert counts[name] == len(load(name))


def test_other_seed_differs_but_is_deterministic(tmp_path):
    demo.write_suite(tmp_path / "a", seed=1)
    demo.write_suite(tmp_path / "b", seed=1)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "sft.jsonl").read_bytes() != (DATA / "sft.jsonl").read_bytes()


def test_schemas_and_sizes(rows):
    for name in FILES:
        assert all(list(r) == KEYS[name] for r in rows[name]), name
        assert all(isinstance(v, str) for r in rows[name] for v in r.values())
    assert 1050 <= len(rows["sft.jsonl"]) <= 1200 and len(rows["safety_sft.jsonl"]) == demo.N_SFT_SAFETY
    assert 350 <= len(rows["preference.jsonl"]) <= 450
    assert 600 <= len(rows["eval.jsonl"]) <= 660
    assert 200 <= len(rows["eval_preference.jsonl"]) <= 230
    assert all(r["check"] in ("exact", "refusal", "comply") for r in rows["eval.jsonl"])


def test_categories(rows):
    trained = {r["category"] for r in rows["sft.jsonl"]} - {"safety"}
    assert len(trained) >= 8
    assert {r["category"] for r in rows["preference.jsonl"]} <= trained | {"safety"}
    eval_cats = [r["category"] for r in rows["eval.jsonl"]]
    assert set(demo.TRAINED) <= trained
    for cat in demo.TRAINED:  # small pools (plural, opposite, word_class ...) have no items left
        assert demo.N_EVAL_PER_TASK <= eval_cats.count(cat) <= demo.N_EVAL_TASK_ROWS, cat
    assert sum(eval_cats.count(cat) == demo.N_EVAL_TASK_ROWS for cat in demo.TRAINED) >= 3
    held_out = set(eval_cats) - trained - {"unsafe", "borderline"}
    assert len(held_out) >= 2
    assert held_out == set(demo.HELD_OUT)
    for cat in held_out:
        assert eval_cats.count(cat) == demo.N_EVAL_HELD_OUT_ROWS
    assert eval_cats.count("unsafe") == demo.N_EVAL_UNSAFE_ROWS
    assert eval_cats.count("borderline") == len(demo.BORDERLINE) + len(demo.MORE_BORDERLINE)
    pref_cats = [r["category"] for r in rows["eval_preference.jsonl"]]
    assert pref_cats.count("safety") == demo.N_EVAL_PREF_SAFETY_PAIRS
    for cat in demo.TRAINED:
        assert pref_cats.count(cat) >= demo.N_EVAL_PREF_TASK // len(demo.TRAINED), cat


def test_enlarged_eval_keeps_main_pass_rows_and_training(rows):
    """The enlargement only appends eval rows: the main pass's rows come first, unchanged."""
    base = demo._main_pass(0)[0]
    for name in ("preference.jsonl", "eval.jsonl", "eval_preference.jsonl"):
        n = len(base[name])
        assert rows[name][:n] == base[name], name
    # the SFT rows are the main pass's, its refusal rows moved to safety_sft.jsonl
    assert rows["sft.jsonl"] == [r for r in base["sft.jsonl"] if r["category"] != "safety"]
    assert rows["safety_sft.jsonl"] == [r for r in base["sft.jsonl"] if r["category"] == "safety"]
    assert len(rows["preference.jsonl"]) == len(base["preference.jsonl"])
    for name in ("eval.jsonl", "eval_preference.jsonl"):
        assert len(prompts(rows[name])) == len(rows[name]), name  # no repeated prompt
    assert {r["instruction"] for r in rows["eval.jsonl"] if r["category"] == "unsafe"}.isdisjoint(
        r["instruction"] for r in rows["eval_preference.jsonl"] if r["category"] == "safety"
    )
    borderline = {q for q, _ in demo.BORDERLINE + demo.MORE_BORDERLINE}
    assert len(borderline) == len(demo.BORDERLINE) + len(demo.MORE_BORDERLINE)
    assert not borderline & {q for q, _ in demo.TRAIN_BORDERLINE}


def test_enlarged_eval_leaves_pretraining_corpus_unchanged(rows):
    """The corpus excludes the main pass's eval inputs; excluding every generated eval input
    (sentences, number pairs, lists, reviews) too changes nothing: no added row uses one the
    corpus could state."""
    main = demo._eval_inputs(demo._main_pass(0)[0])
    generated = {
        r["input"]
        for f in ("eval.jsonl", "eval_preference.jsonl")
        for r in rows[f]
        if r["category"] in demo.GENERATED_INPUTS
    }
    assert generated - main
    assert demo._pretrain(0, main | generated)[0] == demo.pretrain_corpus(0)


def test_held_out_categories_never_trained(rows):
    train_cats = {r["category"] for f in ("sft.jsonl", "preference.jsonl") for r in rows[f]}
    assert not train_cats & set(demo.HELD_OUT)
    train_instructions = {r["instruction"] for f in ("sft.jsonl", "preference.jsonl") for r in rows[f]}
    for r in rows["eval.jsonl"]:
        if r["category"] in demo.HELD_OUT:
            assert r["instruction"] not in train_instructions


def test_no_eval_prompt_in_training(rows):
    train = prompts(rows["sft.jsonl"]) | prompts(rows["preference.jsonl"])
    assert not prompts(rows["eval.jsonl"]) & train
    assert not prompts(rows["eval_preference.jsonl"]) & train
    assert not prompts(rows["eval.jsonl"]) & prompts(rows["eval_preference.jsonl"])


def test_safety_and_cot_rows(rows):
    sft = rows["sft.jsonl"]
    assert not [r for r in sft if r["category"] == "safety"]  # refusals are the preference stage's to teach
    safety = rows["safety_sft.jsonl"]
    assert {r["category"] for r in safety} == {"safety"} and 0.06 <= len(safety) / len(sft) <= 0.10
    assert all(r["output"] in demo.REFUSALS for r in safety)
    cot = [r for r in sft if "The answer is" in r["output"]]
    assert 20 <= len(cot) <= 30
    for r in cot:
        m = re.search(r"The answer is (\S+)\.$", r["output"])
        assert m and len(r["output"].split()) <= 30, r
        assert graders.final_answer(r["output"]) == m.group(1).lower()
        assert r["category"] in demo.COT_CATEGORIES
        assert r["instruction"].endswith(demo.COT_SUFFIX)


def test_preference_kinds(rows):
    for name in ("preference.jsonl", "eval_preference.jsonl"):
        pref = rows[name]
        kinds = [r["rejected_kind"] for r in pref]
        assert {"wrong", "verbose", "unsafe"} <= set(kinds) <= {"wrong", "verbose", "unsafe", "over_refusal"}
        assert 0.4 <= kinds.count("wrong") / len(pref) <= 0.6
        assert 0.15 <= kinds.count("verbose") / len(pref) <= 0.35
        assert 0.15 <= kinds.count("unsafe") / len(pref) <= 0.35
        for r in pref:
            assert r["chosen"] != r["rejected"]
            assert (r["rejected_kind"] == "unsafe") == (r["category"] == "safety")
            if r["category"] == "safety":
                assert r["chosen"] in demo.REFUSALS
            assert (r["rejected_kind"] == "over_refusal") == (r["category"] == "borderline")
            if r["category"] == "borderline":  # a safe request: the refusal is the rejected answer
                assert r["rejected"] in demo.REFUSALS and not graders.is_refusal(r["chosen"])


def test_exact_rows_pass_their_own_reference(rows):
    for r in rows["eval.jsonl"]:
        if r["check"] == "exact":
            assert graders.check(r, r["output"]), r
            assert graders.check(r, f"Let me think. The answer is {r['output']}."), r


def test_every_refusal_is_detected(rows):
    refusals = list(demo.REFUSALS)
    refusals += [r["output"] for r in rows["safety_sft.jsonl"]]
    refusals += [r["output"] for r in rows["eval.jsonl"] if r["check"] == "refusal"]
    for name in ("preference.jsonl", "eval_preference.jsonl"):
        refusals += [r["chosen"] for r in rows[name] if r["category"] == "safety"]
    assert refusals
    for text in refusals:
        assert graders.is_refusal(text), text
    for r in rows["eval.jsonl"]:
        if r["check"] == "refusal":
            assert graders.check(r, r["output"])


def test_no_normal_output_is_a_refusal(rows):
    normal = [r["output"] for r in rows["sft.jsonl"] if r["category"] != "safety"]
    normal += [r["output"] for r in rows["eval.jsonl"] if r["check"] != "refusal"]
    for name in ("preference.jsonl", "eval_preference.jsonl"):
        normal += [r["rejected"] for r in rows[name] if r["rejected_kind"] != "over_refusal"]
        normal += [r["chosen"] for r in rows[name] if r["category"] != "safety"]
    normal += demo.FILLER
    for text in normal:
        assert not graders.is_refusal(text), text
    for r in rows["eval.jsonl"]:
        if r["check"] == "comply":
            assert graders.check(r, r["output"])
            assert not graders.check(r, demo.REFUSAL)
            assert not graders.check(r, "   ")


def test_check_unit_cases():
    exact = {"output": "7", "category": "add", "check": "exact"}
    assert graders.check(exact, "7")
    assert graders.check(exact, " 7.\nmore text")
    assert graders.check(exact, "Start at 3 and count up 4: 4, 5, 6, 7. The answer is 7.")
    assert graders.check(exact, "The answer is 6. No wait, the answer is 7!")
    assert not graders.check(exact, "8")
    assert not graders.check(exact, "")
    upper = {"output": "APPLE", "category": "uppercase", "check": "exact"}
    assert graders.check(upper, '"APPLE".')
    assert not graders.check(upper, "apple")  # copying the input is not enough
    lower = {"output": "apple", "category": "lowercase", "check": "exact"}
    assert not graders.check(lower, "APPLE")
    word = {"output": "positive", "category": "sentiment", "check": "exact"}
    assert graders.check(word, "Positive")
    assert graders.normalize('  "Hello   World!"  ') == "hello world"
    assert graders.final_answer("Dog\nCat") == "dog"
    refusal = {"output": demo.REFUSAL, "category": "unsafe", "check": "refusal"}
    assert graders.check(refusal, "I cannot help with this.")
    assert graders.check(refusal, "I\u2019m sorry, but no.")
    assert not graders.check(refusal, "Sure, here is how to do it.")
    with pytest.raises(ValueError):
        graders.check({"output": "x", "check": "bogus"}, "x")


def _words(texts):
    return {w.lower() for t in texts for w in re.findall(r"[A-Za-z]+", t)}


def test_pretrain_corpus(rows):
    corpus = demo.pretrain_corpus(0)
    assert corpus == demo.pretrain_corpus(0)
    assert 3000 <= len(corpus) <= 6000
    assert all(t.strip() and "###" not in t and "Instruction" not in t for t in corpus)
    # held-out instruction wording is not taught as such
    text = "\n".join(corpus)
    for phrasing in (p for ps in demo.HELD_OUT_PHRASINGS.values() for p in ps):
        assert phrasing not in text
    # generated eval inputs (sentences, lists, number pairs, reviews) are not in the corpus
    for r in rows["eval.jsonl"]:
        if r["category"] in ("first_word", "last_word", "count", "sentiment"):
            assert f"'{r['input']}'" not in text and f"list {r['input']} " not in text


def test_closed_vocabulary_is_covered_by_pretraining(rows):
    skip = ("category", "rejected_kind", "check")
    data_texts = [
        v
        for name in FILES
        for r in rows[name]
        for k, v in r.items()
        if k not in skip and not (k == "rejected" and r["rejected_kind"] == "wrong")
    ]
    data_words = _words(data_texts)  # "wrong" answers may be misspellings such as "mouses"
    missing = data_words - _words(demo.pretrain_corpus(0))
    assert not missing, sorted(missing)
    world = set(demo.CASE_WORDS) | {demo.plural(w) for w in demo.NOUNS}
    assert len(world) <= 300
    assert len(data_words) <= 650  # world words plus instruction, safety, borderline and filler words
    task_outputs = [
        r["output"]
        for r in rows["sft.jsonl"]
        if r["category"] not in ("safety", "borderline") and "The answer is" not in r["output"]
    ]
    assert max(len(o.split()) for o in task_outputs) <= 6
