"""What every stage returns: a small, typed result (paths, the MLflow run id, metrics). Heavy
objects never travel between stages; the flow, the CLI and launched ranks pass these."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_NOT_FLAT = {"lineage", "details", "reused"}


@dataclass
class StageResult:
    stage: str  # the stage, or the preference method that ran (dpo, ppo, ...)
    run_id: str | None  # its MLflow run (None on ranks other than 0)
    metrics: dict[str, Any] = field(default_factory=dict)
    model_path: str | None = None  # the model it produced (select: the one it picked)
    data_path: str | None = None  # the data it produced (self_instruct)
    template: str | None = None  # the prompt template its model was trained with
    lineage: dict[str, Any] = field(default_factory=dict)  # what it read: base_model, reference_model, ...
    details: dict[str, Any] = field(default_factory=dict)  # stage-specific: select's ranking, evaluate's intervals
    reused: bool = False  # finished earlier with the same identity (not written to its result files)

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON object, as written to `<run_dir>/<stage>.json` and the run's result.json."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in _NOT_FLAT}
        return {**own, **self.lineage, **self.details}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageResult:
        own = {f.name for f in dataclasses.fields(cls)} - _NOT_FLAT
        rest = {k: v for k, v in d.items() if k not in own}
        lineage = {k: v for k, v in rest.items() if k.endswith(("_model", "_data"))}
        details = {k: v for k, v in rest.items() if k not in lineage}
        return cls(**{k: v for k, v in d.items() if k in own}, lineage=lineage, details=details)

    @classmethod
    def read(cls, path: Path) -> StageResult | None:
        """The result a stage wrote to `path`, or None when there is none."""
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else None
