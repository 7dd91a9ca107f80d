"""Entering and leaving a stage, the same for every stage: its output folder, its MLflow run, its
data report, and its result files. A stage module holds only its ML between the two."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignpipe.core.config import PipelineConfig
from alignpipe.core.files import FileLock, write_json
from alignpipe.core.result import StageResult
from alignpipe.tracking.runs import is_main, log_data_report, log_json, stage_run


@dataclass
class OpenStage:
    """A stage in progress: where its outputs go (training stages) and its MLflow run."""

    name: str
    run_id: str | None
    out: Path | None
    result: StageResult | None = None
    reused: bool = False  # finished earlier with the same inputs: `result` is that result, nothing runs

    def finish(self, metrics: dict[str, Any], **fields: Any) -> StageResult:
        """The stage's result, logged to its run as result.json (and written to the state dir on exit)."""
        self.result = StageResult(stage=self.name, run_id=self.run_id, metrics=metrics, **fields)
        log_json(self.result.to_dict(), "result.json")
        return self.result


@contextmanager
def open_stage(
    cfg: PipelineConfig,
    name: str,
    section: dict[str, Any],
    inputs: dict[str, Any] | None = None,
    data_report: tuple[dict, str] | None = None,
) -> Iterator[OpenStage]:
    """Run a stage inside its MLflow run (FAILED if it raises).

    inputs: what the stage's outputs depend on; given, the stage gets its own output folder, keyed
    by them, so a checkpoint is only ever resumed by the same job. data_report: (report, context)
    of the rows it trains on, logged to the run. On success the result the stage `finish`ed with
    is written to `<run_dir>/<name>.json`, where `alignpipe stage` finds upstream results, and
    to its output folder: run again with the same inputs, the stage is a no-op that says so
    (`reused`: the stage returns `result`), so a model a run references is never trained over."""
    out = output_dir(cfg, name, inputs) if inputs is not None else None
    # One process at a time trains into a folder: another run with the same inputs waits, then reuses.
    held = out is not None and is_main()
    lock = (
        FileLock(out / ".lock").acquire(f"{name}: another run is on these same inputs ({out}); waiting")
        if held
        else None
    )
    try:
        earlier = StageResult.read(out / "result.json") if out else None
        if earlier and all(Path(p).exists() for p in (earlier.model_path, earlier.data_path) if p):
            print(
                f"{name}: already finished with these inputs (MLflow run {earlier.run_id}); reusing {out}. "
                "Change an input to train a new one"
            )
            stage = OpenStage(name, earlier.run_id, out, earlier, reused=True)
            yield stage
        else:
            with stage_run(cfg, name, section) as run:
                stage = OpenStage(name, run.info.run_id, out)
                if data_report:
                    log_data_report(data_report[0], "data_report", data_report[1])
                yield stage
        if stage.result is not None and is_main():
            write_json(cfg.run_dir / f"{name}.json", stage.result.to_dict())
            if out and not stage.reused:
                write_json(out / "result.json", stage.result.to_dict())
    finally:
        if lock:
            lock.release()


def output_dir(cfg: PipelineConfig, stage: str, inputs: dict[str, Any]) -> Path:
    """One folder per distinct set of inputs (and, for a multi-rank job, of its parallel setup:
    a DeepSpeed/N-rank checkpoint only resumes the same setup)."""
    d = cfg.distributed
    if d.num_processes > 1 or d.deepspeed:
        ds = hashlib.sha256(Path(d.deepspeed).read_bytes()).hexdigest()[:12] if d.deepspeed else None
        setup = {"num_processes": d.num_processes, "deepspeed": ds} | ({"nodes": d.nodes} if d.nodes > 1 else {})
        inputs = {**inputs, "distributed": setup}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cfg.run_dir / f"{stage}-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True, default=str))
    return out
