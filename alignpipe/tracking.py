"""MLflow: one run per stage, with its config, a reproducibility record, metrics and artifacts."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import mlflow
from transformers import TrainerCallback

from alignpipe.config import PipelineConfig

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "deepspeed", "mlflow", "prefect", "alignpipe")


def setup(cfg: PipelineConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (artifacts under the state dir)."""
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(cfg.tracking_uri)
    exp = mlflow.get_experiment_by_name(cfg.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if cfg.tracking_uri.startswith("sqlite:"):
        location = (cfg.state_path / "mlartifacts" / cfg.experiment).as_uri()
    try:
        return mlflow.create_experiment(cfg.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return mlflow.get_experiment_by_name(cfg.experiment).experiment_id


def environment() -> dict[str, Any]:
    """Package versions, hardware and interpreter: enough to reproduce a stage run."""
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


def is_main() -> bool:
    """Rank 0 of a launched job, or a plain process: the only one that talks to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


class _NoRun:
    """What `stage_run` yields on ranks other than 0: a run with no id, nothing logged."""

    class info:
        run_id = None


@contextmanager
def stage_run(cfg: PipelineConfig, stage: str, section: dict[str, Any]) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage (rank 0 only); FAILED (and re-raised) if the stage raises."""
    if not is_main():
        yield _NoRun()
        return
    experiment_id = setup(cfg)
    tags = {
        "alignpipe.stage": stage,
        "alignpipe.config_digest": cfg.digest(),
        "alignpipe.config_file": cfg.source,
    }
    started = time.time()
    run = mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=tags)
    try:
        params = {k: str(v)[:6000] for k, v in _flatten(section).items()}
        params["seed"] = cfg.seed
        mlflow.log_params(params)
        mlflow.log_dict(cfg.to_dict(), "config.json")
        mlflow.log_dict(environment(), "environment.json")
        yield run
    except BaseException:
        mlflow.set_tag("alignpipe.wall_seconds", round(time.time() - started, 1))
        mlflow.end_run(status="FAILED")
        raise
    mlflow.log_metric("wall_seconds", round(time.time() - started, 2))
    mlflow.end_run(status="FINISHED")


class MetricsCallback(TrainerCallback):
    """Send the trainer's logged numbers to the active MLflow run (main process only)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or mlflow.active_run() is None:
            return
        numbers = {k.replace("/", "_"): float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numbers:
            mlflow.log_metrics(numbers, step=state.global_step)


def log_json(obj: Any, name: str) -> None:
    if is_main():
        mlflow.log_dict(obj, name)


def log_params(params: dict[str, Any]) -> None:
    if is_main():
        mlflow.log_params(params)


def log_metrics(metrics: dict[str, float]) -> None:
    if is_main():
        mlflow.log_metrics(metrics)


def set_tag(key: str, value: Any) -> None:
    if is_main():
        mlflow.set_tag(key, value)


def write_result(path: Path, result: dict[str, Any]) -> None:
    """A stage's small result (paths, run id, metrics) written atomically next to its outputs
    (by rank 0 only)."""
    if not is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    os.replace(tmp, path)


def log_artifacts(folder: Path, name: str) -> str | None:
    """Log a folder (e.g. a saved model) as run artifacts; returns its `runs:/` URI (rank 0)."""
    if not is_main():
        return None
    mlflow.log_artifacts(str(folder), name)
    return f"runs:/{mlflow.active_run().info.run_id}/{name}"


def tag_upstream(cfg: PipelineConfig, stage: str, model_path: str) -> None:
    """Lineage: tag the active run with the run id of the `stage` run that produced model_path
    (when it is this experiment's latest result for that stage)."""
    path = cfg.run_dir / f"{stage}.json"
    if not path.is_file():
        return
    found = json.loads(path.read_text())
    if found.get("model_path") == model_path and found.get("run_id"):
        set_tag(f"alignpipe.{stage}_run_id", found["run_id"])
