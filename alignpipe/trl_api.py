"""The one place that imports TRL's trainers and configs (their API moves between releases).

trl is pinned to 1.12.0 on purpose: the last release that ships PPO (removed after 1.12).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from typing import Any

import torch


def _classes(kind: str) -> tuple[type, type]:
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTConfig, SFTTrainer
    if kind == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    raise ValueError(f"unknown TRL method {kind!r}")


@functools.cache
def config_fields(kind: str) -> set[str]:
    """Names a user may set in the section of this method (TRL's own config fields)."""
    cls, _ = _classes(kind)
    return {f.name for f in dataclasses.fields(cls) if f.init} - {"output_dir"}


def defaults_for_this_machine() -> dict[str, Any]:
    """TRL configs default to bf16 and gradient checkpointing: wrong on a CPU, slow on tiny models."""
    on_gpu = torch.cuda.is_available()
    return {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": False,
        "use_cpu": not on_gpu,
        "report_to": "none",
        "save_only_model": False,
    }


def make_config(kind: str, output_dir: str, user: dict[str, Any], ours: dict[str, Any] | None = None):
    """TRL config = machine defaults <- our stage's values <- the user's pass-through fields."""
    cls, _ = _classes(kind)
    values = {**defaults_for_this_machine(), **(ours or {}), **user}
    return cls(output_dir=output_dir, **values)


def check_config(kind: str, user: dict[str, Any]) -> list[str]:
    """Problems with the user's pass-through fields, found by building the real TRL config."""
    if not user:
        return []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_config(kind, tmp, user)
    except (TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [f"TRL {_classes(kind)[0].__name__} rejects these fields ({', '.join(sorted(user))}): {first}"]
    return []


def trainer(kind: str, **kwargs):
    _, cls = _classes(kind)
    return cls(**kwargs)
