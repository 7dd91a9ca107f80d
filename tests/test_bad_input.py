"""Bad input through the real CLI: exit 1, `error:` lines naming file/line/field, no traceback.

Every CLI start costs several seconds (torch/TRL imports), so all cases are started once per
module, two at a time, and each test checks its own result.
"""

import gzip
import json
import time
import zipfile

import pytest

from conftest import ROOT, cli_in_process, run_cli

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
    rows = (ROOT / "data" / "sft.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    paths["gzip"] = d / "gzip.jsonl"  # gzip-compressed under a plain name: read through
    paths["gzip"].write_bytes(gzip.compress("".join(rows).encode()))
    paths["zip"] = d / "zip.jsonl"
    with zipfile.ZipFile(paths["zip"], "w") as z:
        z.writestr("sft.jsonl", "".join(GOOD))
    # one list `output` at line 8 among digit-only string answers ("3"): one error, at line 8
    digits = [json.dumps({"instruction": f"Count {i}.", "input": "", "output": str(i)}) + "\n" for i in range(1, 40)]
    digits[7] = json.dumps({"instruction": "Count.", "input": "", "output": ["a", "b"]}) + "\n"
    paths["list_output"] = d / "list_output.jsonl"
    paths["list_output"].write_text("".join(digits), encoding="utf-8")
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
    same = d / "same_pairs.jsonl"
    same.write_text(
        "".join(json.dumps({"prompt": f"Q{i}?", "chosen": "A.", "rejected": " A. "}) + "\n" for i in range(5)),
        encoding="utf-8",
    )
    dup = d / "dup.yaml"
    dup.write_text((ROOT / TINY).read_text() + "\nseed: 7\n", encoding="utf-8")
    empty_store = d / "empty-store"
    empty_store.mkdir()
    (empty_store / "mlflow.db").write_bytes(b"")
    cases = {
        **{name: (["validate", TINY, "--set", f"data.sft.path={path}"], home) for name, path in f.items()},
        "unknown_key": (["validate", TINY, "--set", "sft.lerning_rate=0.1"], home),
        "values": (
            ["validate", TINY, "--set", "sft.learning_rate=-1", "--set", "sft.lora={r: 0}"]
            + ["--set", "sft.max_steps=0"],
            home,
        ),
        "processes": (["stage", "sft", TINY, "--set", "distributed.num_processes=64"], home),
        "tracking": (["validate", TINY, "--set", "tracking.uri=http://127.0.0.1:9"], home),
        "escape": (["validate", TINY, "--set", "experiment=../../escape"], home),
        "same_pairs": (["validate", TINY, "--set", f"data.preference.path={same}"], home),
        "duplicate_key": (["validate", str(dup)], home),
        "empty_store": (["validate", TINY], {"ALIGNPIPE_HOME": str(empty_store)}),
        "model_path": (["validate", TINY, "--set", "sft.model_path=./no/such/dir"], home),
        "candidate_path": (["validate", TINY, "--set", "model.candidates=[{name: x, path: ./nope}]"], home),
        "stage_sft": (
            ["stage", "sft", TINY, "--set", f"data.sft.path={f['malformed']}"],
            {"ALIGNPIPE_HOME": str(state)},
        ),
    }

    def timed(args, env):
        start = time.time()
        proc = cli_in_process(*args, env=env)
        proc.seconds = time.time() - start
        return proc

    results = {name: timed(*case) for name, case in cases.items()}  # in process: what a fresh interpreter shows
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


def test_compressed_files_are_read_or_named(case):
    assert case["gzip"].returncode == 0 and "Traceback" not in case["gzip"].stderr, case["gzip"].stderr
    assert "format alpaca; kept 1124" in case["gzip"].stdout
    check(case["zip"], str(case["files"]["zip"]), "zip-compressed", "decompress it")


def test_one_bad_row_gives_one_error_at_its_line(case):
    proc = case["list_output"]
    check(proc, str(case["files"]["list_output"]), "line 8", "'output' must be a string, got list")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # not one per later row


def test_nonsense_training_values_are_refused_together(case):
    proc = case["values"]
    check(proc, "'sft.learning_rate' must be > 0, got -1")
    check(proc, "'sft.lora.r' must be >= 1")
    check(proc, "'sft.max_steps' must be > 0 (or -1")


def test_more_ranks_than_cores_is_refused(case):
    check(case["processes"], "distributed.num_processes is 64 but this machine has", "CPU cores")
    assert "launching" not in case["processes"].stdout  # refused before any rank starts


def test_an_unreachable_tracking_server_fails_fast(case):
    proc = case["tracking"]
    check(proc, "'tracking.uri'", "http://127.0.0.1:9", "does not answer", "alignpipe up")
    assert proc.seconds < 60, proc.seconds  # a 3 s probe, not the client's minutes of retries


def test_the_experiment_name_cannot_leave_the_state_dir(case):
    check(case["escape"], "'experiment' must be a plain name", "'../../escape'")


def test_pairs_with_the_same_answer_twice_are_refused(case):
    check(case["same_pairs"], "line 1", "'chosen' and 'rejected' are the same answer", "on_bad_rows=skip")


def test_a_key_given_twice_in_the_recipe_is_refused(case):
    check(case["duplicate_key"], "invalid YAML", "key 'seed' is given twice")


def test_an_empty_mlflow_store_is_not_silently_replaced(case):
    check(case["empty_store"], "'tracking.uri'", "mlflow.db is empty (0 bytes)", "restore it from a backup")


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ["up", "--database", "mysql://me:secret@db:3306"],
            "--database mysql://me:***@db:3306: expected postgresql://",
        ),
        (
            ["up", "--database", "postgresql://me@127.0.0.1:9"],
            "--database postgresql://me@127.0.0.1:9: cannot connect",
        ),
        (["worker", "--prefect", "http://127.0.0.1:9/api", "--mlflow", "http://127.0.0.1:9"], "does not answer"),
    ],
)
def test_servers_bad_database_or_unreachable_servers(args, says, tmp_path):
    """One line naming the flag and the fix, before anything starts; a password is never printed."""
    done = run_cli(*args, "--home", tmp_path, timeout=120)
    assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr
    assert says in done.stderr and "secret" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "pids").exists() or not any((tmp_path / "pids").iterdir())
