"""The Prefect flow `pipeline`, read top to bottom:
select -> [self_instruct] -> sft -> [reward] -> preference -> evaluate -> promote (the gate) -> compare.

`preference.method` picks the preference step (dpo, kto, orpo, simpo, ppo, rloo, grpo); ppo,
rloo and grpo learn against a reward model, so the `reward` stage runs before them. With
`seeds`, sft, reward and the preference step run once per training seed (a task each), and
evaluate scores every seed's models together, with intervals over items and seeds.

Each stage is a Prefect task that runs the stage in this process (or, when sft or an offline
preference method is distributed, as a launched job whose whole process group dies on timeout
or cancel; reward, ppo, rloo and grpo run in process) and returns
only paths, run ids and metrics. Its retries and timeout come from `orchestration.<stage>`.

Caching: a task's cache key digests everything the stage depends on (its config sections, the
content of every data file, the upstream models, the code, the state dir), so an unchanged
re-run skips to the end; a stage that died part-way has no cached result and resumes from its
last checkpoint (its output folder is keyed by the same inputs).

Lineage: one MLflow parent run per pipeline run (tags: flow run, deployment, git commit, config
digest), each stage run its child; a cached stage is linked from the parent by its earlier run id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext

from alignpipe.config import PREFERENCE_METHODS, PipelineConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
LAUNCHABLE = ("sft", "dpo", "kto", "orpo", "simpo")  # stages that can run as a DeepSpeed/accelerate job
SEEDED = ("sft", "reward", "preference")  # stages trained once per seed of `seeds`
# The config sections each stage's result depends on (besides its upstream models and the code).
SECTIONS = {
    "select": ("model", "select", "data", "seed"),
    "self_instruct": ("model", "self_instruct", "data", "seed"),
    "sft": ("model", "sft", "data", "formats", "distributed", "seed"),
    "reward": ("model", "reward", "data", "distributed", "seed"),
    "preference": ("model", "preference", "data", "formats", "distributed", "seed"),
    "evaluate": ("model", "evaluate", "data", "formats", "seed"),
}


@flow(name="pipeline")
def pipeline(config: str = "configs/tiny.yaml", overrides: list[str] | None = None, preference: bool = True) -> dict:
    """Base model -> SFT -> (DPO) -> evaluation of base, SFT-only (and DPO) -> promotion gate.

    `config`: a YAML recipe (relative to the working dir); `overrides`: `key=value` items as
    with `--set`; `preference: false` is the SFT-only pipeline. Everything is validated first."""
    from alignpipe import tracking
    from alignpipe.cli import load_and_validate

    cfg = load_and_validate(config, list(overrides or []))
    _stop_on_sigterm()
    with tracking.pipeline_run(cfg, _flow_tags(cfg, preference)) as parent:
        selected = _stage("select", cfg, {}) if not cfg.sft.model_path else None
        base = cfg.sft.model_path or selected["model_path"]
        generated = None
        if cfg.self_instruct.enabled:  # Self-Instruct rows join the SFT mixture
            generated = _stage("self_instruct", cfg, {"generator": cfg.self_instruct.generator or base})["data_path"]
        from stages.preference import NEEDS_REWARD

        sfts, rewards, prefs = [], [], []
        for seed_cfg in per_seed(cfg):  # one sft (and preference) model per training seed
            sft = _stage("sft", seed_cfg, {"base": base, "generated": generated})
            sfts.append(sft)
            if preference:
                reward = None
                if cfg.preference.method in NEEDS_REWARD:
                    reward = _stage("reward", seed_cfg, {"sft": cfg.reward.model_path or sft["model_path"], "template": sft["template"]})
                    rewards.append(reward)
                start = cfg.preference.model_path or sft["model_path"]
                prefs.append(_stage("preference", seed_cfg, {"sft": start, "template": sft["template"],
                                                             "reward": reward and reward["model_path"]}))
        sft, reward = sfts[0], rewards[0] if rewards else None
        finals = prefs or sfts
        final = finals[0]
        models = {"base": base, "sft": _one_or_all([s["model_path"] for s in sfts])}
        if prefs:
            models[final["stage"]] = _one_or_all([p["model_path"] for p in prefs])
        wanted = {final["stage"] if m == "preference" else m for m in cfg.evaluate.models} | {final["stage"]}
        scored = {k: v for k, v in models.items() if k in wanted}
        judge = _one_or_all([r["model_path"] for r in rewards]) if rewards else None
        evaluation = _stage("evaluate", cfg, {"models": scored, "template": sft["template"], "reward": judge})
        verdict = promote_task(cfg, final["stage"], final["model_path"], evaluation, parent)
        comparison = compare_task(cfg, parent)
    return {"select": selected, "sft": sft, "sft_seeds": sfts, "reward": reward, "final": final, "final_seeds": finals,
            "evaluate": evaluation, "gate": verdict, "comparison": comparison, "parent_run_id": parent}


def per_seed(cfg: PipelineConfig) -> list[PipelineConfig]:
    """The config once per training seed (`seeds`), its `seed` set to it (launched ranks get it as
    an override); one seed: the config itself, so a single-seed run keeps its cache keys."""
    if cfg.training_seeds == [cfg.seed]:
        return [cfg]
    return [dataclasses.replace(cfg, seed=s, overrides=[*cfg.overrides, f"seed={s}"]) for s in cfg.training_seeds]


def _one_or_all(paths: list[str]) -> str | list[str]:
    return paths[0] if len(paths) == 1 else paths


# -- stage tasks ---------------------------------------------------------------------------------


def stage_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Digest of everything a stage's result depends on; equal keys -> Prefect reuses the result."""
    cfg: PipelineConfig = parameters["cfg"]
    stage, inputs = parameters["stage"], parameters["inputs"]
    sections = {}
    for name in SECTIONS[stage]:
        value = getattr(cfg, name, None)
        sections[name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    blob = {
        "stage": stage,
        "sections": sections,
        "files": {p: content_digest(p) for p in _paths(sections.get("data"))},
        "inputs": {k: (v, _digests(v)) if isinstance(v, (str, list)) else v for k, v in inputs.items()},
        "models": {k: _digests(v) for k, v in inputs.get("models", {}).items()},
        "code": code_digest(),
        "state": str(cfg.run_dir),
        "tracking": cfg.tracking_uri,
    }
    digest = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f"alignpipe-{cfg.experiment}-{stage}-{digest}"


@task(name="stage", cache_key_fn=stage_key, persist_result=True)
def stage_task(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> dict:
    """Run one stage; returns its small result (paths, run id, metrics)."""
    with stdout_to_prefect():
        return _run(stage, cfg, inputs)


def _run(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> dict:
    from alignpipe import launch

    policy = getattr(cfg.orchestration, stage)
    if stage == "select":
        from stages.select import run_select

        return run_select(cfg)
    name = cfg.preference.method if stage == "preference" else stage
    if name in LAUNCHABLE and launch.wanted(cfg):
        from alignpipe.tracking import write_result

        if stage == "sft":
            write_result(cfg.run_dir / "select.json", {"stage": "select", "model_path": inputs["base"]})
        else:  # ranks read their upstream result from the state dir, as `alignpipe stage` does
            write_result(cfg.run_dir / "sft.json", {"stage": "sft", "model_path": inputs["sft"], "template": inputs["template"]})
        return launch.run(cfg, name, timeout=policy.timeout_seconds)
    if stage == "self_instruct":
        from stages.self_instruct import run_self_instruct

        return run_self_instruct(cfg, inputs["generator"])
    if stage == "sft":
        from stages.sft import run_sft

        return run_sft(cfg, inputs["base"], inputs["generated"])
    if stage == "reward":
        from stages.reward import run_reward

        return run_reward(cfg, inputs["sft"], inputs["template"])
    if stage == "preference":
        from stages.preference import run_preference

        return run_preference(cfg, inputs["sft"], inputs["template"], inputs["reward"])
    if stage == "evaluate":
        from stages.evaluate import run_evaluate

        return run_evaluate(cfg, inputs["models"], inputs["template"], inputs["reward"])
    raise ValueError(f"unknown stage {stage!r}")


def _stage(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> dict:
    """Run (or reuse) one stage and link its MLflow run from the pipeline's parent run."""
    from alignpipe import tracking

    policy = getattr(cfg.orchestration, stage)
    label = f"{stage}-seed{cfg.seed}" if stage in SEEDED and len(cfg.training_seeds) > 1 else stage
    options = dict(name=stage, task_run_name=label, retries=policy.retries, retry_delay_seconds=policy.retry_delay_seconds,
                   timeout_seconds=policy.timeout_seconds)
    state = stage_task.with_options(**options)(stage, cfg, inputs, return_state=True)
    result = state.result()
    cached = state.name == "Cached"
    if cached and not _outputs_intact(result):  # the cached model was deleted: train it again
        get_run_logger().warning(f"{stage}: the cached result points at missing files; running it again")
        state = stage_task.with_options(**options, refresh_cache=True)(stage, cfg, inputs, return_state=True)
        result, cached = state.result(), False
    if cached:
        get_run_logger().info(f"{stage}: inputs unchanged, reusing MLflow run {result['run_id']}")
    tracking.link_stage(stage, result["run_id"], cached)
    return result


def _outputs_intact(result: dict) -> bool:
    """The files a (cached) result points at are still there (a hub id is not a file)."""
    paths = [result.get("model_path"), result.get("data_path")]
    return all(Path(p).exists() for p in paths if p and str(p).startswith("/"))


# -- gate and comparison -------------------------------------------------------------------------


@task(name="promote")
def promote_task(cfg: PipelineConfig, candidate: str, model_path: str, evaluation: dict, parent_run_id: str) -> dict:
    """Register the final model; move the `champion` alias to it only if the gate passes."""
    from alignpipe import promote

    with stdout_to_prefect():
        return promote.gate_and_register(cfg, candidate, model_path, evaluation, parent_run_id)


@task(name="compare")
def compare_task(cfg: PipelineConfig, parent_run_id: str) -> str:
    """The base / SFT-only / preference table from MLflow, with its plot logged."""
    from alignpipe import compare

    return compare.report(cfg.experiment, cfg.tracking_uri, parent_run_id=parent_run_id)


@contextmanager
def stdout_to_prefect() -> Iterator[None]:
    """Copy each line the task prints (a stage's own output, a launched job's rank output) into
    the Prefect run log, still printing it. Prefect's `log_prints` is not used: it also grabs
    prints that libraries redirect on purpose (dill's disassembly capture)."""
    logger, real = get_run_logger(), sys.stdout

    class Tee(io.TextIOBase):
        pending = ""

        def write(self, text: str) -> int:
            real.write(text)
            lines = (self.pending + text).split("\n")
            self.pending = lines.pop()
            for line in lines:
                if line.strip():
                    logger.info(line.rstrip("\r"))
            return len(text)

        def flush(self) -> None:
            real.flush()

        def fileno(self) -> int:
            return real.fileno()

        def isatty(self) -> bool:
            return False

    sys.stdout = tee = Tee()
    try:
        yield
    finally:
        if tee.pending.strip():
            logger.info(tee.pending)
        sys.stdout = real


# -- digests ---------------------------------------------------------------------------------------


def content_digest(path: str) -> str | None:
    """sha256 of a file; of (name, size, mtime) of every file in a dir; None for a hub id."""
    from alignpipe.data import file_digest

    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        entries = [(str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.rglob("*")) if f.is_file()]
        return hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    return None


def _digests(value: str | list[str]) -> str | None | list[str | None]:
    """content_digest of a path, or of each path of a list (one model per seed)."""
    return [content_digest(v) for v in value] if isinstance(value, list) else content_digest(value)


_code: str | None = None


def code_digest() -> str:
    """The code version: every source file of the package and the stages, and the key libraries."""
    global _code
    if _code is None:
        from alignpipe.tracking import environment

        h = hashlib.sha256()
        for f in sorted([*ROOT.glob("alignpipe/*.py"), *ROOT.glob("stages/*.py")]):
            h.update(f.name.encode() + f.read_bytes())
        env = environment()  # other CPU kernels train other weights: not the same result
        h.update(json.dumps([env["packages"], env["cpu_capability"]], sort_keys=True).encode())
        _code = h.hexdigest()
    return _code


def _paths(node: Any) -> list[str]:
    """Every `path` value in a (nested) config section."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "path" and isinstance(v, str)] + [p for v in node.values() for p in _paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in _paths(v)]
    return []


# -- run context -----------------------------------------------------------------------------------


def _flow_tags(cfg: PipelineConfig, preference: bool) -> dict[str, str]:
    from prefect.runtime import deployment, flow_run

    return {
        "alignpipe.prefect_flow_run_id": str(flow_run.id or ""),
        "alignpipe.prefect_flow_run": str(flow_run.name or ""),
        "alignpipe.deployment": str(deployment.name or "") or ("full" if preference else "sft-only"),
        "alignpipe.pipeline": "full" if preference else "sft-only",
        "alignpipe.git_commit": git_commit(),
        "alignpipe.config_digest": cfg.digest(),
        "alignpipe.config_file": cfg.source,
        "alignpipe.overrides": " ".join(cfg.overrides)[:5000],
    }


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _stop_on_sigterm() -> None:
    """A cancelled flow run gets SIGTERM: raise, so `finally` blocks kill launched process groups
    and the stage's MLflow run ends FAILED."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(SystemExit(143)))


# -- one stage alone (`alignpipe stage NAME`) -----------------------------------------------------


def previous_result(cfg: PipelineConfig, stage: str) -> dict | None:
    path = cfg.run_dir / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_stage(cfg: PipelineConfig, name: str) -> dict:
    """Run one stage; inputs from the config, else from earlier stages' results (run if missing).

    A preference method's name runs that method (`preference.method` set to it)."""
    from stages.evaluate import run_evaluate
    from stages.preference import NEEDS_REWARD, run_preference
    from stages.reward import run_reward
    from stages.select import run_select
    from stages.sft import run_sft

    from alignpipe import launch

    if name == "preference":
        name = cfg.preference.method
    if name in PREFERENCE_METHODS and name != cfg.preference.method:
        cfg = load_config(cfg.source or None, [*cfg.overrides, f"preference.method={name}"])

    def upstream(stage: str) -> dict:
        found = previous_result(cfg, stage)
        if found is None:
            print(f"{name}: no earlier `{stage}` result for experiment '{cfg.experiment}'; running `{stage}` first")
            found = run_stage(cfg, stage)
        return found

    if name == "select":
        return run_select(cfg)
    if name in LAUNCHABLE and launch.wanted(cfg):
        if name == "sft" and not cfg.sft.model_path:
            upstream("select")  # prerequisites run here, once, before any rank starts
        if name != "sft" and not cfg.preference.model_path:
            upstream("sft")
        return launch.run(cfg, name)
    if name == "sft":
        return run_sft(cfg, cfg.sft.model_path or upstream("select")["model_path"])
    if name == "reward":
        if cfg.reward.model_path:
            return run_reward(cfg, cfg.reward.model_path)
        sft = upstream("sft")
        return run_reward(cfg, sft["model_path"], sft["template"])
    if name in PREFERENCE_METHODS:
        reward = upstream("reward")["model_path"] if name in NEEDS_REWARD else None
        if cfg.preference.model_path:
            return run_preference(cfg, cfg.preference.model_path, None, reward)
        sft = upstream("sft")
        return run_preference(cfg, sft["model_path"], sft["template"], reward)
    if name == "evaluate":
        method = cfg.preference.method
        paths = {}
        for model, stage in (("base", "select"), ("sft", "sft"), ("preference", method)):
            found = previous_result(cfg, stage)
            if model in cfg.evaluate.models and found:
                paths[method if model == "preference" else model] = found["model_path"]
        if "base" not in paths and cfg.sft.model_path and "base" in cfg.evaluate.models:
            paths["base"] = cfg.sft.model_path
        if not paths:
            paths["sft"] = upstream("sft")["model_path"]
        paths = {m: paths[m] for m in ("base", "sft", method) if m in paths}
        template = (previous_result(cfg, "sft") or {}).get("template")
        reward = previous_result(cfg, "reward")  # any method: a trained reward model also judges
        return run_evaluate(cfg, paths, template, reward and reward["model_path"])
    raise ValueError(f"unknown stage {name!r}")

