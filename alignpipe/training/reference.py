"""Reference log-probs computed once: a content-addressed artifact per tokenized split, shared by re-runs.

DPO and KTO regularise towards the SFT model. With `precompute_ref_log_probs` TRL scores every
row with it once, before training, and keeps no reference model. `RefLogpsCache` makes that score
a file, `<cache>/ref_logps/<key>.parquet`, where key = sha256 of
- the SFT weights' content (safetensors bytes and config.json, not the path),
- the split's rows exactly as TRL's collator reads them (token ids after its tokenization, so the
  template, the pairs, the format variation and KTO's KL pairing are all in it),
- the method family's logp definition (dpo | kto) and the TRL fields that change a row's score
  (max_length, truncation, precision, ...: `trl_api.ref_logps_settings`), the model dtype and TRL's version.
Training hyperparameters (beta, learning rate, DPO loss_type, steps) are not in it: DPO variants
and re-runs share one artifact. A file whose stored key or row count does not match is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignpipe.core import trl_api
from alignpipe.core.files import file_digest

SUBDIR = "ref_logps"
_KEY = b"alignpipe.ref_logps.key"


def weights_digest(model_dir: str) -> str | None:
    """sha256 over a saved model's safetensors files and config.json; None if it is not a local model dir."""
    p = Path(model_dir)
    files = sorted(p.glob("*.safetensors")) if p.is_dir() else []
    if not files or not (p / "config.json").is_file():
        return None
    h = hashlib.sha256()
    for f in [*files, p / "config.json"]:
        h.update(f"{f.name}:{file_digest(f)}\n".encode())
    return h.hexdigest()


def rows_digest(inputs) -> str:
    """sha256 of a datasets.Dataset's columns and rows, in order."""
    h = hashlib.sha256(json.dumps([sorted(inputs.column_names), len(inputs)]).encode())
    for batch in inputs.select_columns(sorted(inputs.column_names)).iter(batch_size=1024):
        h.update(json.dumps(batch, sort_keys=True).encode())
    return h.hexdigest()


@dataclass
class RefLogpsCache:
    """What `trl_api.trainer(..., ref_logps_cache=)` loads and saves each split's reference log-probs through."""

    root: Path  # <cache>/ref_logps
    model_digest: str  # weights_digest of the SFT model (the reference)
    family: str  # dpo | kto: how a row's reference logp is defined
    settings: dict[str, Any]  # what else changes a row's score
    used: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> key, path, rows, reused

    def key(self, inputs) -> str:
        ident = {"model": self.model_digest, "family": self.family, "settings": self.settings}
        ident["rows"] = rows_digest(inputs)
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def load(self, split: str, inputs):
        """The split's reference columns (a datasets.Dataset, one row per input row), or None to compute them."""
        import pyarrow.parquet as pq
        from datasets import Dataset
        from datasets.table import InMemoryTable

        key = self.key(inputs)
        path = self.path(key)
        self.used[split] = {"key": key, "path": str(path), "rows": len(inputs), "reused": False}
        if not path.is_file():
            return None
        table = pq.read_table(path)
        stored = (table.schema.metadata or {}).get(_KEY, b"").decode()
        if stored != key or table.num_rows != len(inputs):
            print(
                f"reference log-probs: {path} holds key {stored[:12] or 'none'} and {table.num_rows} rows, "
                f"expected {key[:12]} and {len(inputs)}; recomputing it",
                flush=True,
            )
            return None
        self.used[split]["reused"] = True
        print(f"reference log-probs for {split}: reusing {path} ({len(inputs)} rows): no reference pass", flush=True)
        return Dataset(InMemoryTable(table))

    def save(self, split: str, inputs, values) -> None:
        """Write the split's computed reference columns atomically (tmp + rename)."""
        import pyarrow.parquet as pq

        key = self.used.get(split, {}).get("key") or self.key(inputs)  # load() keyed these same inputs
        if len(values) != len(inputs):
            raise ValueError(f"reference log-probs for {split}: {len(values)} values for {len(inputs)} rows")
        path = self.path(key)
        table = values.with_format("arrow")[:]
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _KEY: key.encode()})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.used[split] = {"key": key, "path": str(path), "rows": len(inputs), "reused": False}
        print(f"reference log-probs for {split}: computed, saved to {path}", flush=True)


def cache_for(cache_dir: Path, kind: str, sft: str, args, dtype: str) -> RefLogpsCache | None:
    """The artifact cache for this stage, or None (one line says why) when TRL computes them uncached."""
    if not getattr(args, "precompute_ref_log_probs", False):
        return None
    digest = weights_digest(sft)
    if digest is None:
        print(f"reference log-probs: {sft} is not a local model dir; computed by TRL, not cached", flush=True)
        return None
    settings = {**trl_api.ref_logps_settings(kind, args), "dtype": dtype}
    return RefLogpsCache(Path(cache_dir) / SUBDIR, digest, kind, settings)


def precompute_default(method_default: dict[str, Any], user: dict[str, Any], name: str) -> dict[str, Any]:
    """The method's default `precompute_ref_log_probs`, dropped (one line) when the user's fields rule it out."""
    clash = [k for k in trl_api.PRECOMPUTE_CONFLICTS if user.get(k)]
    if not method_default.get("precompute_ref_log_probs") or not clash or "precompute_ref_log_probs" in user:
        return method_default
    print(f"{name}: {', '.join(clash)} set: reference log-probs not precomputed, TRL keeps a reference", flush=True)
    return {**method_default, "precompute_ref_log_probs": False}
