"""The one way a stage runs, for the flow, for `alignpipe stage` and inside every launched rank:
`run_stage(cfg, name, inputs)`, with its upstream inputs (base model, SFT model, template, ...)
passed explicitly. `alignpipe stage` alone finds missing inputs among this experiment's earlier
results (`resolve_inputs`) and runs what is missing first.
"""

from __future__ import annotations

from typing import Any

from alignpipe.core.config import DISTILL_LABELS, PipelineConfig
from alignpipe.core.recipe import load_config
from alignpipe.core.registry import METHODS, STAGES, entry, launchable, stage_of
from alignpipe.core.result import StageResult
from alignpipe.training import launch, models


def run_stage(cfg: PipelineConfig, name: str, inputs: dict[str, Any]) -> StageResult:
    """Run a stage (or the preference method `name`) with its inputs: in this process, or as a
    multi-rank job when the config asks for one and this process is not already a rank."""
    if name == "preference":
        name = cfg.preference.method
    if name in METHODS and not METHODS[name].needs_reward:
        inputs = {k: v for k, v in inputs.items() if k != "reward"}
    if launchable(name) and launch.wanted(cfg):
        policy = getattr(cfg.orchestration, stage_of(name).name)
        return launch.run(cfg, name, inputs, timeout=policy.timeout_seconds)
    return entry(name)(cfg, **inputs)


# -- one stage alone (`alignpipe stage NAME`) -----------------------------------------------------


def previous_result(cfg: PipelineConfig, stage: str) -> StageResult | None:
    """This experiment's latest result of `stage` (written by the stage on success)."""
    return StageResult.read(cfg.run_dir / f"{stage}.json")


def for_method(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """The config with `preference.method` set to `name` when a method is run by its name."""
    if name in METHODS and name != cfg.preference.method:
        return load_config(cfg.source or None, [*cfg.overrides, f"preference.method={name}"])
    return cfg


def resolve_inputs(cfg: PipelineConfig, name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The inputs of `name`: those given (`--input`), else from the config (`sft.model_path`, ...),
    else from this experiment's earlier results, running a missing upstream stage first."""

    def upstream(stage: str) -> StageResult:
        found = previous_result(cfg, stage)
        if found is None:
            print(f"{name}: no earlier `{stage}` result for experiment '{cfg.experiment}'; running `{stage}` first")
            found = run_stage(cfg, stage, resolve_inputs(cfg, stage, {}))
        return found

    def sft_model() -> tuple[str, str | None]:
        if "sft" in inputs:  # given (--input sft=PATH): trained with the recipe's sft.template
            return inputs["sft"], None
        if cfg.preference.model_path:
            return cfg.preference.model_path, None
        sft = upstream("sft")
        return sft.model_path, sft.template

    wanted = STAGES[stage_of(name).name].inputs
    inputs = {k: v for k, v in given.items() if k in wanted}
    missing = [k for k in wanted if k not in inputs]
    if name == "self_instruct" and "generator" in missing:
        inputs["generator"] = cfg.self_instruct.generator or cfg.sft.model_path or upstream("select").model_path
    elif name in ("sft", "student_sft", "distill"):
        base = None
        if {"base", "student"} & set(missing):
            base = cfg.sft.model_path or upstream("select").model_path
        if "base" in missing:
            inputs["base"] = base if name == "sft" else student_of(cfg, base)
        if "student" in missing:
            inputs["student"] = student_of(cfg, base)
        if "generated" in missing:
            generated = previous_result(cfg, "self_instruct") if cfg.self_instruct.enabled else None
            inputs["generated"] = generated.data_path if generated else None
        if name == "distill":
            if "teacher" in missing or "template" in missing:
                sft = upstream("sft")
                inputs.setdefault("teacher", cfg.distill.teacher or sft.model_path)
                inputs.setdefault("template", sft.template)
            if "student_sft" in missing and cfg.distill.mode == "logits" and cfg.distill.start == "sft":
                inputs["student_sft"] = upstream("student_sft").model_path
    elif name == "reward" and missing:
        model, template = (cfg.reward.model_path, None) if cfg.reward.model_path else sft_model()
        inputs.setdefault("sft", model)
        inputs.setdefault("template", template)
    elif name in METHODS and missing:
        model, template = sft_model()
        inputs.setdefault("sft", model)
        inputs.setdefault("template", template)
        if METHODS[name].needs_reward:
            inputs.setdefault("reward", upstream("reward").model_path)
    elif name == "evaluate" and missing:
        inputs.setdefault("models", _models_to_score(cfg, lambda: upstream("sft")))
        inputs.setdefault("template", (previous_result(cfg, "sft") or StageResult("sft", None)).template)
        reward = previous_result(cfg, "reward")  # any method: a trained reward model also judges
        inputs.setdefault("reward", reward and reward.model_path)
    return inputs


def student_of(cfg: PipelineConfig, base: str) -> str:
    """The distillation student's base model: `distill.student`, else the pipeline's base."""
    return models.named_source(cfg, cfg.distill.student) if cfg.distill.student else base


def _models_to_score(cfg: PipelineConfig, sft) -> dict[str, str]:
    """base, sft and the preference model of earlier results, as `evaluate.models` asks."""
    method = cfg.preference.method
    paths = {}
    for model, stage in (("base", "select"), ("sft", "sft"), ("preference", method)):
        found = previous_result(cfg, stage)
        if model in cfg.evaluate.models and found:
            paths[method if model == "preference" else model] = found.model_path
    if "base" not in paths and cfg.sft.model_path and "base" in cfg.evaluate.models:
        paths["base"] = cfg.sft.model_path
    if not paths:
        paths["sft"] = sft().model_path
    if cfg.distill.enabled:
        for label, stage in (("student_sft", "student_sft"), ("student_distill", "distill")):
            found = previous_result(cfg, stage)
            if found:
                paths[label] = found.model_path
        distilled = previous_result(cfg, "distill")
        if distilled:
            paths["teacher"] = distilled.lineage.get("teacher_model")
    order = ("base", "sft", method, *DISTILL_LABELS)
    return {m: paths[m] for m in order if paths.get(m)}
