"""The one way a stage runs, for the flow, for `alignpipe stage` and inside every launched rank.

`run_stage(cfg, name, inputs)` runs a stage (or the preference method `name`) with its inputs, or
returns the result it finished with earlier under the same identity: a digest of everything its
result depends on (the config sections and data files the registry declares for it, its inputs and
their content, the code and CPU kernels, the state dir, the tracking store). The identity names the
stage's output folder, so a checkpoint is only resumed by the same job and a model that a run
references is never trained over. It is the only reason a stage is reused, in the flow and alone.

`resolve(cfg, name, lookup)` reads a stage's inputs off the registry's graph: the flow looks
upstream results up among its own, `alignpipe stage` (`resolve_inputs`) among this experiment's
earlier results, running a missing upstream stage first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alignpipe import tracking
from alignpipe.core.config import DISTILL_LABELS, PipelineConfig, StudentSpec
from alignpipe.core.files import FileLock, content_digest, written_as_path
from alignpipe.core.recipe import load_config
from alignpipe.core.registry import METHODS, STAGES, Stage, StagePolicy, entry, launchable, stage_of
from alignpipe.core.result import StageResult
from alignpipe.training import launch, models

ROOT = Path(__file__).resolve().parents[1]

# A stage's upstream results: `lookup(stage, soft)` gives one result, one per training seed, or None.
Lookup = Callable[[str, bool], "StageResult | list[StageResult] | None"]


def run_stage(cfg: PipelineConfig, name: str, inputs: dict[str, Any]) -> StageResult:
    """Run a stage (or the preference method `name`) with its inputs: reused when it finished earlier
    with the same identity, else in this process, or as a multi-rank job when the config asks for one
    and this process is not already a rank."""
    if name == "preference":
        name = cfg.preference.method
    stage = stage_of(name)
    inputs = {k: v for k, v in inputs.items() if k in taken(cfg, stage)}
    if launch.in_rank():  # the launching process found nothing to reuse, and holds the folder's lock
        with tracking.stage_folder(tracking.launched_folder() or folder(cfg, name, inputs)):
            return entry(name)(cfg, **inputs)
    out = folder(cfg, name, inputs)
    # One job at a time in a folder; every node of a multi-node job enters it, node 0 holds the lock.
    lock = None if cfg.distributed.node_rank else FileLock(out / ".lock")
    if lock:
        lock.acquire(f"{name}: another run is on identity {out.name}; waiting")
    try:
        finished = StageResult.read(out / "result.json")
        if finished and _outputs_intact(finished):
            print(f"{name}: finished earlier as {out.name} (MLflow run {finished.run_id}); reusing it")
            tracking.record_result(cfg, finished)
            return dataclasses.replace(finished, reused=True)
        with tracking.stage_folder(out):
            if launchable(name) and launch.wanted(cfg):
                return launch.run(cfg, name, inputs, timeout=policy(cfg, stage.name).timeout_seconds, folder=out)
            return entry(name)(cfg, **inputs)
    finally:
        if lock:
            lock.release()


def policy(cfg: PipelineConfig, stage: str) -> StagePolicy:
    """`orchestration.<stage>` of the recipe (the registry's default for a stage it does not name)."""
    return getattr(cfg.orchestration, stage, None) or STAGES[stage].policy


def _outputs_intact(result: StageResult) -> bool:
    """The files a finished result points at are still there (a hub id is not a file)."""
    paths = [result.model_path, result.data_path]
    return all(Path(p).exists() for p in paths if p and written_as_path(p))


# -- identity --------------------------------------------------------------------------------------


def identity(cfg: PipelineConfig, name: str, inputs: dict[str, Any]) -> str:
    """Digest of everything the result of stage (or method) `name` depends on: its declared config
    sections and the content of every file they name (data, seed tasks, DeepSpeed config), its inputs
    and their content, the code and the CPU kernels, the state dir and the tracking store."""
    stage = stage_of(name)
    sections = {}
    for section in stage.sections:
        value = getattr(cfg, section, None)
        sections[section] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    if "distributed" in sections:  # the parallel setup, not how this node reaches the others (port, rank, address)
        d = cfg.distributed
        sections["distributed"] = {"num_processes": d.num_processes, "deepspeed": d.deepspeed, "nodes": d.nodes}
    blob = {
        "stage": name,
        "sections": sections,
        "files": {p: content_digest(p) for p in _files(sections)},
        "inputs": {k: _with_digests(v) for k, v in sorted(inputs.items()) if v is not None},  # None: not given
        "code": code_digest(),
        "state": str(cfg.run_dir),
        "tracking": cfg.tracking_uri,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def folder(cfg: PipelineConfig, name: str, inputs: dict[str, Any]) -> Path:
    """The output folder of `name` with these inputs: `<run_dir>/<name>-<identity>`."""
    out = cfg.run_dir / f"{name}-{identity(cfg, name, inputs)}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def _with_digests(value: Any) -> Any:
    """A path with its content digest; lists and mappings (several seeds, labelled models) per item."""
    if isinstance(value, dict):
        return {k: _with_digests(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_with_digests(v) for v in value]
    return [value, content_digest(value)] if isinstance(value, str) else value


_code: str | None = None


def code_digest() -> str:
    """The code version: every source file of the package and the stages, and the key libraries."""
    global _code
    if _code is None:
        h = hashlib.sha256()
        for f in sorted([*ROOT.glob("alignpipe/**/*.py"), *ROOT.glob("stages/*.py")]):
            h.update(str(f.relative_to(ROOT)).encode() + f.read_bytes())
        env = tracking.environment()  # other CPU kernels train other weights: not the same result
        h.update(json.dumps([env["packages"], env["cpu_capability"]], sort_keys=True).encode())
        _code = h.hexdigest()
    return _code


def _files(node: Any) -> list[str]:
    """Every value in (nested) config sections that names an existing file: data files, seed tasks,
    a DeepSpeed config, a hostfile."""
    if isinstance(node, dict):
        return [p for v in node.values() for p in _files(v)]
    if isinstance(node, list):
        return [p for v in node for p in _files(v)]
    return [node] if isinstance(node, str) and node and Path(node).is_file() else []


# -- the graph -------------------------------------------------------------------------------------


def plan(cfg: PipelineConfig, preference: bool = True) -> list[Stage]:
    """The stages the flow runs for this recipe, in order (`preference: false`: the SFT-only pipeline)."""
    return [s for s in STAGES.values() if s.when(cfg) and (preference or not s.preference_step)]


def taken(cfg: PipelineConfig, stage: Stage) -> list[str]:
    """The names of the inputs `stage` takes with this recipe."""
    return [i.name for i in stage.inputs if i.when is None or i.when(cfg)]


def resolve(cfg: PipelineConfig, name: str, lookup: Lookup, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The inputs of stage (or method) `name`: those `given`, the rest from their sources in the graph."""
    given = given or {}
    stage = stage_of(name)
    inputs = {k: v for k, v in given.items() if k in taken(cfg, stage)}
    for spec in stage.inputs:
        if spec.name in inputs or (spec.when and not spec.when(cfg)):
            continue
        if spec.labels:
            found = {label: _value(cfg, sources, lookup, True) for label, sources in spec.labels}
            inputs[spec.name] = scored(cfg, found, lookup)
        else:
            inputs[spec.name] = _value(cfg, spec.sources, lookup, spec.soft)
    return inputs


def _value(cfg: PipelineConfig, sources: tuple[str, ...], lookup: Lookup, soft: bool) -> Any:
    """The first source that has a value: a set recipe value, else an upstream result's field."""
    for source in sources:
        kind, _, key = source.partition(":")
        if key:  # config:KEY or model:KEY
            value = _config_value(cfg, key)
            if value:
                return _model(cfg, value) if kind == "model" else value
            continue
        stage, _, field = source.partition(".")
        found = lookup(stage, soft)
        if isinstance(found, list):  # one result per training seed: one value if they all agree (a template)
            values = [_field(r, field) for r in found]
            return values[0] if len({str(v) for v in values}) == 1 else values
        if found is not None:
            return _field(found, field)
    return None


def _model(cfg: PipelineConfig, value: str | StudentSpec) -> str:
    """A loadable location for a model the recipe names; a StudentSpec's is its truncated copy."""
    if isinstance(value, StudentSpec):
        source = models.named_source(cfg, value.from_)
        return str(models.truncated(source, value.layers, cfg.model, models.cache_dir(cfg)))
    return models.named_source(cfg, value)


def _config_value(cfg: PipelineConfig, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _field(result: StageResult, field: str) -> Any:
    return getattr(result, field) if field in StageResult.__dataclass_fields__ else result.lineage.get(field)


def scored(cfg: PipelineConfig, found: dict[str, Any], lookup: Lookup) -> dict[str, Any]:
    """The models evaluate scores, by label: `evaluate.models` (its `preference` is labelled by the
    method), the run's final model (the preference model, else SFT) always, and the distillation
    branch's when enabled. With no upstream result at all, the SFT stage runs first."""
    if not any(found.values()):
        found["sft"] = _value(cfg, ("sft.model_path",), lookup, False)
    method = cfg.preference.method
    final = method if found.get("preference") else "sft"
    wanted = {method if m == "preference" else m for m in cfg.evaluate.models} | {final}
    if cfg.distill.enabled:
        wanted |= set(DISTILL_LABELS)
    labelled = {method if k == "preference" else k: v for k, v in found.items()}
    order = ("base", "sft", method, *DISTILL_LABELS)
    return {m: labelled[m] for m in order if labelled.get(m) and m in wanted}


# -- one stage alone (`alignpipe stage NAME`) -----------------------------------------------------


def previous_result(cfg: PipelineConfig, stage: str) -> StageResult | None:
    """This experiment's latest result of `stage` (a preference stage's under its method's name)."""
    name = cfg.preference.method if stage == "preference" else stage
    return StageResult.read(cfg.run_dir / f"{name}.json")


def for_method(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """The config with `preference.method` set to `name` when a method is run by its name."""
    if name in METHODS and name != cfg.preference.method:
        return load_config(cfg.source or None, [*cfg.overrides, f"preference.method={name}"])
    return cfg


def resolve_inputs(cfg: PipelineConfig, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The inputs of `name`: those given (`--input`), else from the config (`sft.model_path`, ...),
    else from this experiment's earlier results, running a missing upstream stage first."""

    def lookup(stage: str, soft: bool) -> StageResult | None:
        found = previous_result(cfg, stage)
        if found is None and not soft:
            print(f"{name}: no earlier `{stage}` result for experiment '{cfg.experiment}'; running `{stage}` first")
            found = run_stage(cfg, stage, resolve_inputs(cfg, stage, {}))
        return found

    return resolve(cfg, name, lookup, given)
