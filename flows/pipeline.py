"""The Prefect flow `pipeline`: the registry's stages (alignpipe.core.registry) that the recipe
runs, in order, then the gate and the comparison:
select -> [self_instruct] -> sft -> [reward] -> preference -> [student_sft -> distill] -> evaluate
-> promote (the gate) -> compare.

Each stage's inputs come off the registry's graph (`runner.resolve`) from this run's results.
`preference.method` picks the preference step (a registry Method); ppo, rloo and grpo learn
against a reward model, so the `reward` stage runs before them. With `seeds`, the seeded stages
(sft, reward, preference, student_sft, distill) run once per training seed (a task each), and
evaluate scores every seed's models together, with intervals over items and seeds.

With `distill.enabled`, a student (`distill.student`) is trained twice on the same SFT data:
SFT-only (`student_sft`) and distilled from the teacher (`distill.teacher`, default the SFT
model); evaluate scores the teacher and both students beside the others. Teacher and student are
checked (tokenizers, chat template, sizes) right after `select`, before anything trains.

Each stage is a Prefect task that runs the stage through the runner, in this process (or, when
a launchable stage is distributed, as a launched job whose whole process group dies on timeout
or cancel) and returns only paths, run ids and metrics. Its retries and timeout come from
`orchestration.<stage>` (defaults in the registry).

Reuse: a stage that finished earlier with the same identity (alignpipe.flows.runner: a digest of
its config sections, data, inputs, code) is not run again, here as under `alignpipe stage`; its
task ends `Cached`. A stage that died part-way resumes from its last checkpoint (its output folder
is named by the same identity).

Lineage: one MLflow parent run per pipeline run (tags: flow run, deployment, git commit, config
digest), each stage run its child; a reused stage is linked from the parent by its earlier run id.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import deployment, flow_run
from prefect.states import Completed, State

from alignpipe import tracking
from alignpipe.core import processes
from alignpipe.core.config import PipelineConfig
from alignpipe.core.files import FileLock
from alignpipe.core.registry import STAGES
from alignpipe.core.result import StageResult
from alignpipe.data.validate import load_and_validate
from alignpipe.evaluation import compare, promote
from alignpipe.flows import runner
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
        results: dict[str, Any] = {}  # stage -> its result (seeded stages: one per training seed)
        unchecked = cfg.distill.enabled  # teacher and student are checked before anything trains
        for stage in runner.plan(cfg, preference):  # the registry's stages this recipe runs, in order
            if unchecked and stage.name != "select":
                check_pair(cfg, *_distill_pair(cfg, results), cfg.sft.template)
                unchecked = False
            seeds = list(enumerate(per_seed(cfg))) if stage.seeded else [(None, cfg)]
            runs = [_stage(stage.name, c, runner.resolve(c, stage.name, _lookup(results, i))) for i, c in seeds]
            results[stage.name] = runs if stage.seeded else runs[0]
        evaluation, finals = results["evaluate"], results.get("preference") or results["sft"]
        scored = runner.resolve(cfg, "evaluate", _lookup(results, None))["models"]
        gated = {"final": finals[0].stage, "preference": finals[0].stage}.get(cfg.promote.candidate)
        gated = gated or cfg.promote.candidate
        gated_path = _first(scored.get(gated)) or finals[0].model_path
        verdict = promote_task(cfg, gated, gated_path, evaluation, parent)
        comparison = compare_task(cfg, parent)
    first = {k: v[0] if isinstance(v, list) else v for k, v in results.items()}
    return {
        **{k: first.get(k) for k in ("select", "sft", "reward", "student_sft", "distill")},
        "sft_seeds": results["sft"],
        "final": finals[0],
        "final_seeds": finals,
        "evaluate": evaluation,
        "gate": verdict,
        "comparison": comparison,
        "parent_run_id": parent,
    }


def _lookup(results: dict[str, Any], seed: int | None) -> runner.Lookup:
    """Upstream results of this flow run: the same training seed's for a seeded stage, every seed's
    for evaluate."""

    def lookup(stage: str, soft: bool) -> StageResult | list[StageResult] | None:
        found = results.get(stage)
        if found is None and not soft:
            raise RuntimeError(f"the registry's graph needs `{stage}` before it runs")
        return found[seed] if isinstance(found, list) and seed is not None else found

    return lookup


def _distill_pair(cfg: PipelineConfig, results: dict[str, Any]) -> tuple[str, str]:
    """Teacher and student as the distillation stages will get them (the SFT model keeps the base's
    tokenizer, so the base stands for the default teacher)."""
    student = runner.resolve(cfg, "student_sft", _lookup(results, None))["base"]
    base = runner.resolve(cfg, "sft", _lookup(results, None))["base"]
    return cfg.distill.teacher or base, student


def _first(value: str | list[str] | None) -> str | None:
    return value[0] if isinstance(value, list) else value


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
    an override); one seed: the config itself, so a single-seed run keeps its identities."""
    if cfg.training_seeds == [cfg.seed]:
        return [cfg]
    return [dataclasses.replace(cfg, seed=s, overrides=[*cfg.overrides, f"seed={s}"]) for s in cfg.training_seeds]


# -- stage tasks ---------------------------------------------------------------------------------


@task(name="stage")
def stage_task(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> StageResult | State:
    """Run one stage through the runner; returns its small result (paths, run id, metrics). A stage
    the runner reused (it finished earlier with the same identity) ends `Cached` in Prefect."""
    with stdout_to_prefect():
        result = runner.run_stage(cfg, stage, inputs)
    return (
        Completed(data=result, name="Cached", message=f"reused MLflow run {result.run_id}")
        if result.reused
        else result
    )


def _stage(stage: str, cfg: PipelineConfig, inputs: dict[str, Any]) -> StageResult:
    """Run (or reuse) one stage and link its MLflow run from the pipeline's parent run."""
    policy = runner.policy(cfg, stage)
    label = f"{stage}-seed{cfg.seed}" if STAGES[stage].seeded and len(cfg.training_seeds) > 1 else stage
    result = stage_task.with_options(
        name=stage,
        task_run_name=label,
        retries=policy.retries,
        retry_delay_seconds=policy.retry_delay_seconds,
        timeout_seconds=policy.timeout_seconds,
    )(stage, cfg, inputs, return_state=True).result()
    tracking.link_stage(stage, result.run_id, result.reused)
    return result


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
    """Copy each line the task prints (a stage's own output, a trainer's log lines, a launched job's
    rank output) into the Prefect run log, still printing it. Prefect's `log_prints` is not used: it
    also grabs prints that libraries redirect on purpose (dill's disassembly capture)."""
    logger, real = get_run_logger(), sys.stdout

    class Tee(io.TextIOBase):
        pending = ""

        def write(self, text: str) -> int:
            real.write(text)
            lines = (self.pending + text).split("\n")
            self.pending = lines.pop()
            for line in lines:
                to_run_log(logger, line)
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
        to_run_log(logger, tee.pending)
        sys.stdout = real


def to_run_log(run_logger: logging.LoggerAdapter, line: str) -> None:
    """One printed line to the run logger's own handlers (Prefect's API handler: the run log in the UI).
    Not `run_logger.info`: that record would also reach the root logger's console handler, which
    prints it to stderr as well, so every line the task printed would show twice in the terminal.
    A line a progress bar redrew with carriage returns (a launched job's tqdm) is logged as a terminal
    shows it: its last part."""
    line = line.rstrip("\r").rsplit("\r", 1)[-1]
    logger = run_logger.logger
    if not line.strip() or not logger.isEnabledFor(logging.INFO):
        return
    msg, kwargs = run_logger.process(line, {})
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, msg, (), None, extra=kwargs.get("extra"))
    for handler in logger.handlers:
        if record.levelno >= handler.level:
            handler.handle(record)


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
