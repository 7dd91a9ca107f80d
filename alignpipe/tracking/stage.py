"""Entering and leaving a stage, the same for every stage: its output folder, its MLflow run, its
data report, and its result files. A stage module holds only its ML between the two."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignpipe.core.config import PipelineConfig
from alignpipe.core.files import write_json
from alignpipe.core.result import StageResult
from alignpipe.tracking.runs import is_main, log_data_report, log_json, stage_run


@dataclass
class OpenStage:
    """A stage in progress: where its outputs go (training stages) and its MLflow run."""

    name: str
    run_id: str | None
    out: Path
    result: StageResult | None = None

    def finish(self, metrics: dict[str, Any], **fields: Any) -> StageResult:
        """The stage's result, logged to its run as result.json (and written to the state dir on exit)."""
        self.result = StageResult(stage=self.name, run_id=self.run_id, metrics=metrics, **fields)
        log_json(self.result.to_dict(), "result.json")
        return self.result


FOLDER_ENV = "ALIGNPIPE_STAGE_DIR"  # a launched job's output folder, for its ranks
_folder: ContextVar[Path | None] = ContextVar("alignpipe_stage_folder", default=None)


@contextmanager
def stage_folder(out: Path) -> Iterator[None]:
    """The output folder of the stage run inside the block (alignpipe.flows.runner picks it by the
    stage's identity)."""
    token = _folder.set(out)
    try:
        yield
    finally:
        _folder.reset(token)


def launched_folder() -> Path | None:
    """In a launched rank: the output folder the launching process picked."""
    return Path(os.environ[FOLDER_ENV]) if os.environ.get(FOLDER_ENV) else None


@contextmanager
def open_stage(
    cfg: PipelineConfig,
    name: str,
    section: dict[str, Any],
    data_report: tuple[dict, str] | None = None,
) -> Iterator[OpenStage]:
    """Run a stage inside its MLflow run (FAILED if it raises).

    section: the recipe values the run logs as params. data_report: (report, context) of the rows
    it trains on, logged to the run. Its output folder (`out`) is the one the runner picked by the
    stage's identity. On success the result the stage `finish`ed with is written to the folder (the
    runner reuses it for the same identity) and to `<run_dir>/<name>.json`, where `alignpipe stage`
    finds upstream results."""
    out = _folder.get()
    if out is None:
        raise RuntimeError(f"{name}: run stages through alignpipe.flows.runner.run_stage (it picks the output folder)")
    with stage_run(cfg, name, section) as run:
        stage = OpenStage(name, run.info.run_id, out)
        if data_report:
            log_data_report(data_report[0], "data_report", data_report[1])
        yield stage
    if stage.result is not None and is_main():
        record_result(cfg, stage.result)
        write_json(out / "result.json", stage.result.to_dict())


def record_result(cfg: PipelineConfig, result: StageResult) -> None:
    """The experiment's latest result of a stage, where `alignpipe stage` finds its upstream results."""
    if is_main():
        write_json(cfg.run_dir / f"{result.stage}.json", result.to_dict())
