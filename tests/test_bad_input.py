"""Bad input through the real CLI: exit 1, `error:` lines naming file/line/field, no traceback.

Every CLI start costs several seconds (torch/TRL imports), so all cases are started once per
module, two at a time, and each test checks its own result.
"""

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import ROOT, run_cli

pytestmark = pytest.mark.fast

TINY = "configs/tiny.yaml"
GOOD = (ROOT / "data" / "sft.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:3]
KEEP = "notes the user left here\n"


def _bad_files(d):
    files = {
        "malformed": "".join(GOOD) + '{"instruction": "x", "output": \n',  # line 4
        "missing": GOOD[0] + '{"instruction": "Say hi.", "input": ""}\n',  # line 2, no 'output'
        "empty": "",
        "wrong_type": '{"instruction": "Count.", "input": "a, b", "output": 2}\n',  # line 1
    }
    paths = {}
    for name, text in files.items():
        paths[name] = d / f"{name}.jsonl"
        paths[name].write_text(text, encoding="utf-8")
    paths["non_utf8"] = d / "non_utf8.jsonl"  # line 3: Latin-1 é
    paths["non_utf8"].write_bytes("".join(GOOD[:2]).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n')
    return paths


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    f = _bad_files(d)
    state = d / "state"
    state.mkdir()
    (state / "notes.txt").write_text(KEEP)
    before = (state / "notes.txt").stat().st_mtime_ns
    home = {"ALIGNPIPE_HOME": str(d / "validate-state")}
    cases = {
        **{name: (["validate", TINY, "--set", f"data.sft.path={path}"], home) for name, path in f.items()},
        "unknown_key": (["validate", TINY, "--set", "sft.lerning_rate=0.1"], home),
        "model_path": (["validate", TINY, "--set", "sft.model_path=./no/such/dir"], home),
        "candidate_path": (["validate", TINY, "--set", "model.candidates=[{name: x, path: ./nope}]"], home),
        "stage_sft": (
            ["stage", "sft", TINY, "--set", f"data.sft.path={f['malformed']}"],
            {"ALIGNPIPE_HOME": str(state)},
        ),
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, *args, env=env) for name, (args, env) in cases.items()}
        results = {name: fut.result() for name, fut in futures.items()}
    return {"files": f, "state": state, "notes_mtime": before, **results}


def check(proc, *parts):
    """Exit 1; every stderr line is an `error:` line; one of them names all `parts`; no traceback."""
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out
    assert proc.returncode == 1, out
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, "no error message on stderr"
    assert all(line.startswith("error:") for line in lines), proc.stderr
    assert any(all(p in line for p in parts) for line in lines), (parts, proc.stderr)


def test_malformed_json_line(case):
    check(case["malformed"], str(case["files"]["malformed"]), "line 4", "malformed JSON")


def test_missing_field(case):
    check(case["missing"], str(case["files"]["missing"]), "line 2", "missing field 'output'")


def test_empty_file(case):
    check(case["empty"], str(case["files"]["empty"]), "empty")


def test_wrong_type(case):
    check(case["wrong_type"], str(case["files"]["wrong_type"]), "line 1", "'output'", "must be a string")


def test_non_utf8(case):
    check(case["non_utf8"], str(case["files"]["non_utf8"]), "line 3", "UTF-8")


def test_unknown_config_key(case):
    check(case["unknown_key"], TINY, "unknown key 'sft.lerning_rate'", "did you mean 'sft.learning_rate'")


def test_missing_sft_model_path(case):
    check(case["model_path"], TINY, "'sft.model_path'", "./no/such/dir", "does not exist")


def test_missing_candidate_path(case):
    check(case["candidate_path"], TINY, "'model.candidates[0].path'", "./nope", "does not exist")


def test_stage_with_bad_data_stops_before_training(case):
    proc, state = case["stage_sft"], case["state"]
    check(proc, str(case["files"]["malformed"]), "line 4")
    assert "MLflow run" not in proc.stdout
    assert not list((state / "runs").glob("**/checkpoint-*"))
    notes = state / "notes.txt"
    assert notes.read_text() == KEEP
    assert notes.stat().st_mtime_ns == case["notes_mtime"]
