"""MLflow: one run per stage, with its config, a reproducibility record, metrics and artifacts.

Lineage: a pipeline run is a parent run (its id travels in $ALIGNPIPE_PARENT_RUN_ID, so launched
ranks see it too) with one child run per stage. Each stage run records the datasets it read
(`log_dataset`: source, digest, context) and the models it read (`log_model_input`); each model a
stage produces is an MLflow logged model (`log_model`) whose source run is that stage run.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from transformers import TrainerCallback

from alignpipe.core import gguf_api, processes, progress, trl_api
from alignpipe.core.config import PipelineConfig
from alignpipe.core.files import env_override, file_digest, file_lock

PARENT_ENV = "ALIGNPIPE_PARENT_RUN_ID"
# The MLflow UI opens an experiment of this kind in its model-training view (runs table, charts),
# not the GenAI one.
EXPERIMENT_KIND, FINETUNING = "mlflow.experimentKind", "finetuning"
PACKAGES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "deepspeed",
    "mlflow",
    "prefect",
    "alignpipe",
)


def use_uri(uri: str) -> None:
    """Point this process's MLflow client at `uri`. mlflow.set_tracking_uri also exports it as
    $MLFLOW_TRACKING_URI, which would then override the tracking store of every later config in
    this process (and its children); keep the environment as the user set it."""
    with env_override({"MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI")}):
        mlflow.set_tracking_uri(uri)


def setup(cfg: PipelineConfig) -> str:
    """Point MLflow at the configured store and return the experiment id (artifacts under the state
    dir). Runs left RUNNING by a process of this machine that no longer exists are ended KILLED."""
    cfg.state_path.mkdir(parents=True, exist_ok=True)
    use_uri(cfg.tracking_uri)
    # Several runs at once in one home: the store's tables are created (migrated) by one of them.
    with file_lock(cfg.state_path / ".mlflow.lock"):
        exp = mlflow.get_experiment_by_name(cfg.experiment)
        if exp is not None:
            if EXPERIMENT_KIND not in exp.tags:  # made by an older version, or by hand
                mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, FINETUNING)
            close_orphans(exp.experiment_id)
            return exp.experiment_id
        location = None
        if cfg.tracking_uri.split(":", 1)[0].split("+", 1)[0] in ("sqlite", "postgresql", "mysql", "mssql"):
            # a database store, not a server: without a location, artifacts would land in ./mlruns of the cwd
            location = (cfg.state_path / "mlartifacts" / cfg.experiment).as_uri()
        return mlflow.create_experiment(cfg.experiment, artifact_location=location, tags={EXPERIMENT_KIND: FINETUNING})


def owner_tags() -> dict[str, str]:
    """Which process holds a run open: set on every run this project starts."""
    return {"alignpipe.host": socket.gethostname(), "alignpipe.pid": str(os.getpid())}


def close_orphans(experiment_id: str) -> list[str]:
    """End as KILLED the experiment's RUNNING runs whose process (on this machine) is gone: a stage
    or pipeline killed too hard (SIGKILL, power loss) to end its own run. Returns their ids."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    runs = client.search_runs(
        [experiment_id], f"attributes.status = 'RUNNING' and tags.`alignpipe.host` = '{host}'", max_results=200
    )
    closed = []
    for run in runs:
        pid = int(run.data.tags.get("alignpipe.pid", "0") or 0)
        if pid <= 0 or processes.alive(pid):
            continue
        client.set_tag(run.info.run_id, "alignpipe.closed_by", f"the next start: process {pid} had died")
        client.set_terminated(run.info.run_id, "KILLED")
        closed.append(run.info.run_id)
    if closed:
        print(f"tracking: ended {len(closed)} run(s) left RUNNING by a killed process as KILLED: {', '.join(closed)}")
    return closed


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
        "cpu_model": _cpu_model(),
        # Which PyTorch CPU kernels run (AVX512, AVX2, ...): they round differently, so trained
        # weights and single-seed metrics differ between machines; see docs/verdicts.md.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "env": {k: os.environ[k] for k in _NUMERIC_ENV if k in os.environ},
        "cuda": torch.cuda.is_available(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


_NUMERIC_ENV = (
    "ATEN_CPU_CAPABILITY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "CUBLAS_WORKSPACE_CONFIG",
    "PYTHONHASHSEED",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


# MLflow 3 keeps at most this many characters of a param's value.
MAX_PARAM_CHARS = 6000


def _params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """MLflow params of a nested dict: dotted keys, lists and dicts as JSON, values cut to MLflow's limit."""
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in _flatten(d, prefix).items()}


def is_main() -> bool:
    """Rank 0 of a launched job, or a plain process: the only one that talks to MLflow."""
    return int(os.environ.get("RANK", "0")) == 0


_active_cfg: PipelineConfig | None = None  # the config of the stage run in progress


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
        **owner_tags(),
    }
    global _active_cfg
    _active_cfg = cfg
    started = time.time()
    parent = os.environ.get(PARENT_ENV) or None
    run = mlflow.start_run(
        experiment_id=experiment_id, run_name=stage, tags=tags, parent_run_id=parent, nested=bool(parent)
    )
    try:
        params = _params(section)
        params["seed"] = cfg.seed
        mlflow.log_params(params)
        mlflow.log_dict(cfg.to_dict(), "config.json")
        mlflow.log_dict(environment(), "environment.json")
        with wandb_settings(cfg, stage):
            yield run
    except BaseException:
        mlflow.set_tag("alignpipe.wall_seconds", round(time.time() - started, 1))
        mlflow.end_run(status="FAILED")
        raise
    mlflow.log_metric("wall_seconds", round(time.time() - started, 2))
    mlflow.end_run(status="FINISHED")


def log_model_runs(cfg: PipelineConfig, table: dict, intervals: dict, models: dict, seeds: list[int]) -> list[str]:
    """One run per scored model, nested under the active (evaluate) run: the same metric names for
    every model (`acc_seen`, `acc_seen_lo`, `acc_seen_hi`, ...) and tags for its role, pipeline and
    seeds, so MLflow's runs table (Group by `alignpipe.role`), chart view and Compare set SFT-only
    beside DPO, within a pipeline run and across them. Returns their run ids."""
    ids, experiment_id = [], mlflow.active_run().info.experiment_id
    for role, metrics in table.items():
        tags = {
            "alignpipe.role": role,
            "alignpipe.model_path": _one_or_list(models[role]),
            "alignpipe.seeds": ",".join(map(str, seeds)),
            "alignpipe.pipeline_run": os.environ.get(PARENT_ENV, ""),
            "alignpipe.config_digest": cfg.digest(),
            **owner_tags(),
        }
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"eval-{role}", nested=True, tags=tags) as run:
            values = {k: v for k, v in metrics.items() if v is not None}
            for k, (lo, hi) in intervals.get(role, {}).items():
                values |= {f"{k}_lo": lo, f"{k}_hi": hi}
            mlflow.log_metrics(values)
            ids.append(run.info.run_id)
    return ids


def log_evaluation(cfg: PipelineConfig, report: dict, models: dict, samples: list[dict]) -> None:
    """The evaluate stage's record on its run: each model's metrics (`dpo/acc_seen`) and interval ends
    (`dpo/acc_seen_lo`, `dpo/acc_seen_hi`), each paired difference (`dpo_vs_sft/acc_seen_delta`, `_lo`,
    `_hi`), one nested run per model (`log_model_runs`), the sample generations as a table
    (samples.json) and the whole report (evaluation.json: `alignpipe.evaluation.stats.report`)."""
    if not is_main():
        return
    table, intervals = report["summary"], report["intervals"]
    for name, metrics in table.items():
        mlflow.log_metrics({f"{name}/{k}": v for k, v in metrics.items() if v is not None})
        mlflow.log_metrics(
            {f"{name}/{k}_{end}": b for k, (lo, hi) in intervals[name].items() for end, b in (("lo", lo), ("hi", hi))}
        )
    for pair, ks in report["comparisons"].items():
        mlflow.log_metrics({f"{pair}/{k}_{f}": v[f] for k, v in ks.items() for f in ("delta", "lo", "hi")})
    log_model_runs(cfg, table, intervals, models, report["seeds"])
    mlflow.log_table({k: [s[k] for s in samples] for k in samples[0]} if samples else {}, "samples.json")
    mlflow.log_dict(report, "evaluation.json")


def _one_or_list(value: str | list[str]) -> str:
    return value if isinstance(value, str) else ",".join(value)


@contextmanager
def pipeline_run(cfg: PipelineConfig, tags: dict[str, str]) -> Iterator[str]:
    """The parent MLflow run of one pipeline run; stage runs started inside become its children.

    Yields the parent run id; the run ends FAILED (and the error propagates) if anything raises."""
    experiment_id = setup(cfg)
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id, run_name="pipeline", tags={**tags, "alignpipe.stage": "pipeline", **owner_tags()}
    )
    run_id = run.info.run_id
    started = time.time()
    status = "FAILED"
    try:
        with env_override({PARENT_ENV: run_id}):
            client.log_dict(run_id, cfg.to_dict(), "config.json")
            client.log_dict(run_id, environment(), "environment.json")
            client.log_param(run_id, "seed", cfg.seed)
            yield run_id
        status = "FINISHED"
    finally:
        client.log_metric(run_id, "wall_seconds", round(time.time() - started, 2))
        client.set_terminated(run_id, status)


def link_stage(stage: str, run_id: str | None, cached: bool) -> None:
    """On the pipeline's parent run: which MLflow run holds this stage's result (a cached stage's
    run is the one that first produced it)."""
    parent = os.environ.get(PARENT_ENV)
    if parent and run_id:
        client = mlflow.MlflowClient()
        client.set_tag(parent, f"alignpipe.run.{stage}", run_id)
        client.set_tag(parent, f"alignpipe.cached.{stage}", str(cached).lower())


class MetricsCallback(TrainerCallback):
    """Send the trainer's final arguments as training begins (`log_trainer_args`), then its logged
    numbers, to the active MLflow run (main process only). Every training stage's trainer has one."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and mlflow.active_run() is not None:
            log_trainer_args(args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or mlflow.active_run() is None:
            return
        numbers = {
            k.replace("/", "_"): float(v)
            for k, v in logs.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if numbers:
            mlflow.log_metrics(numbers, step=state.global_step)


# Trainer arguments that are no `trl.*` param (trainer_args.json keeps them): the stage's own
# folders, another path in every run.
RUN_PATHS = ("output_dir", "logging_dir")


def log_trainer_args(args) -> None:
    """What TRL got, on the active stage run: the trainer's final arguments, all of them as
    trainer_args.json, and those that differ from their config class's declared defaults
    (`trl_api.changed_values`) as `trl.<field>` params (`trl.learning_rate`), but for RUN_PATHS.
    mlflow.log_params sends a batch 100 params at a time."""
    if not is_main():
        return
    values = trl_api.config_values(args)
    log_json(values, "trainer_args.json")
    changed = trl_api.changed_values(args, values)
    log_params(_params({k: v for k, v in changed.items() if k not in RUN_PATHS}, "trl."))


def log_dataset(path: str, context: str, digest: str | None = None, rows: int | None = None) -> None:
    """Record a dataset the active stage run read: its source, content digest and role
    (context: train, eval, preference, ...). Nothing is uploaded."""
    if not is_main() or not path:
        return
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    local = Path(path).exists()
    source = str(Path(path).resolve()) if local else path
    digest = digest or (file_digest(path) if local and Path(path).is_file() else None)
    if local:
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": it is a local file
            warnings.simplefilter("ignore")
            src = resolve_dataset_source(source)
    else:  # a hub id
        from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource

        src = HuggingFaceDatasetSource(path=path)
    ds = MetaDataset(src, name=Path(path).name, digest=digest[:32] if digest else None)  # MLflow keeps <= 36 chars
    tags = {"sha256": digest} if digest else {}
    if rows is not None:
        tags["rows"] = str(rows)
    mlflow.log_input(ds, context=context, tags=tags or None)


MODEL_PATH_TAG = "alignpipe.model_path"


def log_model(model_dir: str | Path, name: str, params: dict[str, Any] | None = None) -> str | None:
    """Log a model the active stage run produced as an MLflow logged model (its source run is
    this run), with its files unless `tracking.log_model_weights` is off. Returns the model id."""
    if not is_main():
        return None
    weights = _active_cfg is None or _active_cfg.tracking.log_model_weights
    from mlflow.entities import LoggedModelOutput

    run_id = mlflow.active_run().info.run_id
    model = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run_id,
        model_type="transformers",
        tags={MODEL_PATH_TAG: str(model_dir)},
        params={k: str(v) for k, v in (params or {}).items()},
        experiment_id=mlflow.active_run().info.experiment_id,
    )
    client = mlflow.MlflowClient()
    try:
        if weights and Path(model_dir).is_dir():
            mib = sum(f.stat().st_size for f in Path(model_dir).rglob("*") if f.is_file()) / 2**20
            label = f"{name}: logging the model's files to MLflow ({mib:,.0f} MiB)" if mib >= 100 else ""  # else quick
            with progress.step(label):
                client.log_model_artifacts(model.model_id, str(model_dir))
    except BaseException:
        mlflow.finalize_logged_model(model.model_id, "FAILED")
        raise
    mlflow.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    mlflow.set_tag(f"alignpipe.output_model.{name}", model.model_id)
    return model.model_id


def find_model(model_path: str, experiment_id: str | None = None) -> str | None:
    """The newest READY logged model of the experiment (default: the active run's) saved at
    `model_path`, or None."""
    if experiment_id is None:
        run = mlflow.active_run()
        if run is None:
            return None
        experiment_id = run.info.experiment_id
    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"tags.`{MODEL_PATH_TAG}` = '{model_path}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
        output_format="list",
    )
    ready = [m for m in found if str(m.status).endswith("READY")]
    produced = [
        m for m in ready if m.tags.get("alignpipe.external") != "true"
    ]  # prefer the stage output over a reference
    best = produced or ready
    return best[0].model_id if best else None


def log_model_input(model_path: str, role: str) -> str | None:
    """Record a model the active stage run read (role: base, reference, policy, scored:<name>).

    A model an earlier stage logged is linked by id; any other (a hub id, a local dir) is first
    logged as an external model (a reference, no weights). Returns the model id."""
    if not is_main():
        return None
    from mlflow.entities import LoggedModelInput

    model_id = find_model(str(model_path))
    gguf = {f"alignpipe.gguf.{k}": str(v) for k, v in (gguf_api.lineage(model_path) or {}).items()}
    if model_id is None:
        run = mlflow.active_run()
        p = Path(str(model_path))
        ext = mlflow.initialize_logged_model(
            name=(p.parent.name if p.name == "model" else p.name).replace(".", "-") or "model",
            source_run_id=run.info.run_id,
            model_type="transformers",
            tags={MODEL_PATH_TAG: str(model_path), "alignpipe.external": "true", **gguf},
            experiment_id=run.info.experiment_id,
        )
        model_id = mlflow.finalize_logged_model(ext.model_id, "READY").model_id
    mlflow.log_input(model=LoggedModelInput(model_id))
    mlflow.set_tag(f"alignpipe.input_model.{role}", model_id)
    if gguf:  # a model dequantised from a GGUF file: its sha256 and source are this run's lineage too
        mlflow.set_tags(
            {f"alignpipe.input_model.{role}.gguf_{k}": gguf[f"alignpipe.gguf.{k}"] for k in ("sha256", "source")}
        )
    return model_id


def log_artifact(path: str | Path) -> None:
    if is_main():
        mlflow.log_artifact(str(path))


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


@contextmanager
def wandb_settings(cfg: PipelineConfig, stage: str) -> Iterator[None]:
    """With `tracking.report_to: [wandb]`, the trainer's W&B run is named after the stage, in a
    project named after the experiment ($WANDB_PROJECT wins), with its files under the state dir
    ($WANDB_DIR wins); it is finished with the stage. Without wandb in report_to: nothing."""
    if "wandb" not in cfg.tracking.report_to:
        yield
        return
    wanted = {
        "WANDB_PROJECT": os.environ.get("WANDB_PROJECT") or cfg.experiment,
        "WANDB_NAME": stage,
        "WANDB_DIR": os.environ.get("WANDB_DIR") or str(cfg.state_path),
    }
    failed = True
    with env_override(wanted):
        try:
            yield
            failed = False
        finally:
            wandb = sys.modules.get("wandb")  # imported by the trainer's callback, if the stage trained
            if wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.finish(exit_code=1 if failed else 0)


def tag_upstream(cfg: PipelineConfig, stage: str, model_path: str) -> None:
    """Lineage: tag the active run with the run id of the `stage` run that produced model_path
    (when it is this experiment's latest result for that stage)."""
    path = cfg.run_dir / f"{stage}.json"
    if not path.is_file():
        return
    found = json.loads(path.read_text())
    if found.get("model_path") == model_path and found.get("run_id"):
        set_tag(f"alignpipe.{stage}_run_id", found["run_id"])


def log_data_report(report: dict, name: str, context: str) -> None:
    """The stage's data report as an MLflow artifact, dropped-row counts as metrics, and each
    source as a dataset input of the run (`context`: train, preference, ...) with its kept rows."""
    log_json(report, f"{name}.json")
    for s in report["sources"]:
        log_dataset(s["path"], context, rows=s["kept"])
    counts: Counter = Counter()
    for s in report["sources"]:
        counts.update(s["dropped"])
    metrics = {f"data_dropped_{k}": v for k, v in counts.items()}
    metrics["data_duplicates_dropped"] = report.get("duplicates_dropped", 0)
    metrics["data_contaminated_dropped"] = report.get("decontamination", {}).get("removed", 0)
    metrics["data_rows"] = report["rows"]
    log_metrics({k: float(v) for k, v in metrics.items()})
