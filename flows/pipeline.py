"""The Prefect flow `pipeline`, read top to bottom:
select -> [self_instruct] -> sft -> [reward] -> preference -> [student_sft -> distill] -> evaluate
-> promote (the gate) -> compare.

`preference.method` picks the preference step (dpo, kto, orpo, simpo, ppo, rloo, grpo); ppo,
rloo and grpo learn against a reward model, so the `reward` stage runs before them. With
`seeds`, sft, reward and the preference step run once per training seed (a task each), and
evaluate scores every seed's models together, with intervals over items and seeds.

With `distill.enabled`, a student (`distill.student`) is trained twice on the same SFT data:
SFT-only (`student_sft`) and distilled from the teacher (`distill.teacher`, default the SFT
model); evaluate scores the teacher and both students beside the others. Teacher and student are
checked (tokenizers, chat template, sizes) right after `select`, before anything trains.

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
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.context import TaskRunContext
from prefect.runtime import deployment, flow_run

from alignpipe import tracking
from alignpipe.core import processes
from alignpipe.core.config import DISTILL_LABELS, PipelineConfig
from alignpipe.core.files import FileLock, content_digest, file_lock, written_as_path
from alignpipe.core.registry import NEEDS_REWARD, STAGES
from alignpipe.core.result import StageResult
from alignpipe.data.validate import load_and_validate
from alignpipe.evaluation import compare, promote
from alignpipe.flows.runner import run_stage, student_of
from alignpipe.stages.distill import check_pair

ROOT = Path(__file__).resolve().parents[1]


@flow(name="pipeline")
def pipeline(config: str = "configs/tiny.yaml", overrides: list[str] | None = None, preference: bool = True) -> dict:
    """Base model -> SFT -> (preference method) -> evaluation of base, SFT-only (and the preference
    model) -> promotion gate -> comparison.

    `config`: a YAML recipe (relative to the working dir); `overrides`: `key=value` items as
    with `--set`; `preference: false` is the SFT-only pipeline. Everything is validated first."""
    _started()
    if not os.environ.get("PREFECT_API_URL"):  # the temporary server dies with this process, even on SIGKILL
        processes.reap_with(os.getpid(), processes.children(os.getpid(), b"prefect.server"))
    cfg = load_and_validate(config, list(overrides or []))
    processes.stop_on_sigterm(SystemExit)  # a cancelled flow run: finally blocks run, then it exits
    with tracking.pipeline_run(cfg, _flow_tags(cfg, preference)) as parent:
        selected = _stage("select", cfg, {}) if not cfg.sft.model_path else None
        base = cfg.sft.model_path or selected.model_path
        student = student_of(cfg, base) if cfg.distill.enabled else None
        if student:  # teacher and student checked before anything trains (the SFT model keeps the base's tokenizer)
            check_pair(cfg, cfg.distill.teacher or base, student, cfg.sft.template)
        generated = None
        if cfg.self_instruct.enabled:  # Self-Instruct rows join the SFT mixture
            generated = _stage("self_instruct", cfg, {"generator": cfg.self_instruct.generator or base}).data_path
        sfts, rewards, prefs, twins, distilled = [], [], [], [], []
        for seed_cfg in per_seed(cfg):  # one sft (and preference) model per training seed
            sft = _stage("sft", seed_cfg, {"base": base, "generated": generated})
            sfts.append(sft)
            if preference:
                reward = None
                if cfg.preference.method in NEEDS_REWARD:
                    start = cfg.reward.model_path or sft.model_path
                    reward = _stage("reward", seed_cfg, {"sft": start, "template": sft.template})
                    rewards.append(reward)
                start = cfg.preference.model_path or sft.model_path
                prefs.append(
                    _stage(
                        "preference",
                        seed_cfg,
                        {"sft": start, "template": sft.template, "reward": reward and reward.model_path},
                    )
                )
            if student:  # the student SFT-only, then distilled from the teacher on the same data
                twin = _stage("student_sft", seed_cfg, {"base": student, "generated": generated})
                twins.append(twin)
                teacher = cfg.distill.teacher or sft.model_path
                inputs = {"teacher": teacher, "student": student, "template": sft.template, "generated": generated}
                if cfg.distill.mode == "logits" and cfg.distill.start == "sft":
                    inputs["student_sft"] = twin.model_path
                distilled.append(_stage("distill", seed_cfg, inputs))
        sft, reward = sfts[0], rewards[0] if rewards else None
        finals = prefs or sfts
        final = finals[0]
        models = {"base": base, "sft": _one_or_all([s.model_path for s in sfts])}
        if prefs:
            models[final.stage] = _one_or_all([p.model_path for p in prefs])
        wanted = {final.stage if m == "preference" else m for m in cfg.evaluate.models} | {final.stage}
        if distilled:
            models["teacher"] = _one_or_all([d.lineage["teacher_model"] for d in distilled])
            models["student_sft"] = _one_or_all([t.model_path for t in twins])
            models["student_distill"] = _one_or_all([d.model_path for d in distilled])
            wanted |= set(DISTILL_LABELS)
        scored = {k: v for k, v in models.items() if k in wanted}
        judge = _one_or_all([r.model_path for r in rewards]) if rewards else None
        evaluation = _stage("evaluate", cfg, {"models": scored, "template": sft.template, "reward": judge})
        gated = {"final": final.stage, "preference": final.stage}.get(cfg.promote.candidate, cfg.promote.candidate)
        gated_path = models[gated] if gated in models else final.model_path
        gated_path = gated_path[0] if isinstance(gated_path, list) else gated_path
        verdict = promote_task(cfg, gated, gated_path, evaluation, parent)
        comparison = compare_task(cfg, parent)
    return {
        "select": selected,
        "sft": sft,
        "sft_seeds": sfts,
        "reward": reward,
        "final": final,
        "final_seeds": finals,
        "student_sft": twins[0] if twins else None,
        "distill": distilled[0] if distilled else None,
        "evaluate": evaluation,
        "gate": verdict,
        "comparison": comparison,
        "parent_run_id": parent,
    }


_starting: FileLock | None = None


def run_here(config: str, overrides: list[str], preference: bool = True) -> dict:
    """The flow in this process (`alignpipe run`), on a temporary Prefect server unless
    PREFECT_API_URL names one. Several runs at once in one home share PREFECT_HOME: their servers
    start (and migrate its database) one at a time; each flow releases the start-up lock as it begins."""
    global _starting
    if not os.environ.get("PREFECT_API_URL"):
        home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
        _starting = FileLock(home / ".startup.lock").acquire("waiting for another run's Prefect server to start")
    try:
        return pipeline(config=config, overrides=overrides, preference=preference)
    finally:
        _started()


def _started() -> None:
    global _starting
    if _starting is not None:
        _starting.release()
        _starting = None


def per_seed(cfg: PipelineConfig) -> list[PipelineConfig]:
    """The config once per training seed (`seeds`), its `seed` set to it (launched ranks get it as
    an override); one seed: the config itself, so a single-seed run keeps its cache keys."""
    if cfg.training_seeds == [cfg.seed]:
        return [cfg]
    return [dataclasses.replace(cfg, seed=s, overrides=[*cfg.overrides, f"seed={s}"]) for s in cfg.training_seeds]


def _one_or_all(paths: list[str]) -> str | list[str]:
    return paths[0] if len(paths) == 1 else paths


# -- stage tasks ---------------------------------------------------------------------------------


def stage_key(context: TaskRunContext | None, parameters: dict[str, Any]) -> str:
    """Digest of everything a stage's result depends on; equal keys -> Prefect reuses the result."""
    cfg: PipelineConfig = parameters["cfg"]
    stage, inputs = parameters["stage"], parameters["inputs"]
    sections = {}
    for name in STAGES[stage].sections:
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
def stage_task(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> StageResult:
    """Run one stage; returns its small result (paths, run id, metrics)."""
    with stdout_to_prefect():
        return run_stage(cfg, stage, inputs)


def _stage(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> StageResult:
    """Run (or reuse) one stage and link its MLflow run from the pipeline's parent run."""
    policy = getattr(cfg.orchestration, stage)
    label = f"{stage}-seed{cfg.seed}" if STAGES[stage].seeded and len(cfg.training_seeds) > 1 else stage
    options = dict(
        name=stage,
        task_run_name=label,
        retries=policy.retries,
        retry_delay_seconds=policy.retry_delay_seconds,
        timeout_seconds=policy.timeout_seconds,
    )
    # Two runs at once on the same inputs: one runs the task (and writes Prefect's cached result,
    # which is not written atomically), the other waits and then reads that result.
    key = stage_key(None, {"stage": stage, "cfg": cfg, "inputs": inputs})
    with file_lock(cfg.state_path / "locks" / f"{key}.lock", f"{label}: another run has these inputs; waiting"):
        state = stage_task.with_options(**options)(stage, cfg, inputs, return_state=True)
        result = state.result()
        cached = state.name == "Cached"
        if cached and not _outputs_intact(result):  # the cached model was deleted: train it again
            get_run_logger().warning(f"{stage}: the cached result points at missing files; running it again")
            state = stage_task.with_options(**options, refresh_cache=True)(stage, cfg, inputs, return_state=True)
            result, cached = state.result(), False
    if cached:
        get_run_logger().info(f"{stage}: inputs unchanged, reusing MLflow run {result.run_id}")
    tracking.link_stage(stage, result.run_id, cached)
    return result


def _outputs_intact(result: StageResult) -> bool:
    """The files a (cached) result points at are still there (a hub id is not a file)."""
    paths = [result.model_path, result.data_path]
    return all(Path(p).exists() for p in paths if p and written_as_path(p))


# -- gate and comparison -------------------------------------------------------------------------


@task(name="promote")
def promote_task(
    cfg: PipelineConfig, candidate: str, model_path: str, evaluation: StageResult, parent_run_id: str
) -> dict:
    """Register the final model; move the `champion` alias to it only if the gate passes."""
    with stdout_to_prefect():
        return promote.gate_and_register(cfg, candidate, model_path, evaluation, parent_run_id)


@task(name="compare")
def compare_task(cfg: PipelineConfig, parent_run_id: str) -> str:
    """The base / SFT-only / preference table from MLflow, with its plot logged."""
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


def _digests(value: str | list[str]) -> str | None | list[str | None]:
    """content_digest of a path, or of each path of a list (one model per seed)."""
    return [content_digest(v) for v in value] if isinstance(value, list) else content_digest(value)


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


def _paths(node: Any) -> list[str]:
    """Every `path` value in a (nested) config section."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "path" and isinstance(v, str)] + [
            p for v in node.values() for p in _paths(v)
        ]
    if isinstance(node, list):
        return [p for v in node for p in _paths(v)]
    return []


# -- run context -----------------------------------------------------------------------------------


def _flow_tags(cfg: PipelineConfig, preference: bool) -> dict[str, str]:
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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
