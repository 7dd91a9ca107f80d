"""The one graph of the pipeline: every stage (its entry, upstream inputs, when it runs, its
retry/timeout policy, the config sections it depends on) and every preference method. Every other
list is derived from here: the recipe's `orchestration` and `preference.method` choices, the flow's
order and each stage's inputs, `alignpipe stage`'s input resolution, the models evaluate scores,
each stage's identity (alignpipe.flows.runner), what can be launched on several ranks.

Adding a preference method: one `Method` entry here, and its TRL config block in the recipes.
Adding a stage: one module under `stages/` with its entry function, and one `Stage` entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    """A preference method: the TRL trainer it uses and how the flow treats it."""

    name: str
    trl_kind: str  # key of alignpipe.core.trl_api's trainer table
    entry: str  # `module:function` that trains it
    defaults: dict[str, Any] = field(default_factory=dict)  # TRL config values it starts from (a recipe's win)
    locked: dict[str, Any] = field(default_factory=dict)  # TRL config values that define it (a recipe may not change)
    needs_reward: bool = False  # learns against the `reward` stage's model
    has_reference: bool = False  # regularised towards the SFT model (a reference copy)
    launchable: bool = False  # may run as a DeepSpeed/accelerate job on several ranks


_OFFLINE = "alignpipe.stages.offline:run_offline"
_ONLINE = "alignpipe.stages.online_rl:run_online_rl"
_PRECOMPUTE = {"precompute_ref_log_probs": True}

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        # Reference log-probs computed once and cached (alignpipe.training.reference): no reference model held.
        Method("dpo", "dpo", _OFFLINE, defaults=_PRECOMPUTE, has_reference=True, launchable=True),
        Method(
            "ipo",
            "dpo",
            _OFFLINE,
            defaults=_PRECOMPUTE,
            locked={"loss_type": "ipo"},
            has_reference=True,
            launchable=True,
        ),
        Method("kto", "kto", _OFFLINE, defaults=_PRECOMPUTE, has_reference=True, launchable=True),
        Method("orpo", "orpo", _OFFLINE, launchable=True),
        Method("simpo", "cpo", _OFFLINE, defaults={"cpo_alpha": 0.0}, locked={"loss_type": "simpo"}, launchable=True),
        Method("ppo", "ppo", "alignpipe.stages.ppo:run_ppo", needs_reward=True, has_reference=True),
        Method("rloo", "rloo", _ONLINE, needs_reward=True, has_reference=True),
        Method("grpo", "grpo", _ONLINE, needs_reward=True, has_reference=True),
    )
}


@dataclass
class StagePolicy:
    """How the Prefect flow runs one stage (`orchestration.<stage>` in a recipe). A retry of a
    training stage resumes from its last checkpoint; a timeout stops the stage (a launched job's
    whole process group is killed)."""

    retries: int = 0
    retry_delay_seconds: int = 30
    timeout_seconds: int | None = None


@dataclass(frozen=True)
class Input:
    """One input of a stage, passed to its entry function by `name`, and where it comes from.

    `sources` are tried in order: `config:KEY` is a recipe value (taken when set), `model:KEY` a
    recipe value naming a model (a `model.candidates` name, a dir or a hub id), `STAGE.FIELD` a field
    of that stage's result (model_path, data_path, template, or a lineage entry such as
    teacher_model; one per training seed where the stage is seeded and the reader is not). A hard
    input's upstream stage runs first when it has no result; a `soft` one is None then. `labels`
    makes the input a {label: value} mapping of several such sources (evaluate's models); `when`
    limits the input to the recipes it holds for."""

    name: str
    sources: tuple[str, ...] = ()
    soft: bool = False
    labels: tuple[tuple[str, tuple[str, ...]], ...] = ()
    when: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class Stage:
    """A step of the flow. `entry` is `module:function`; the function takes the config and the
    stage's inputs as keyword arguments and returns a StageResult."""

    name: str
    entry: str
    sections: tuple[str, ...]  # config sections its result depends on (part of its identity)
    inputs: tuple[Input, ...] = ()
    when: Callable[[Any], bool] = lambda cfg: True  # whether the flow runs it for this recipe
    preference_step: bool = False  # left out of the SFT-only pipeline
    seeded: bool = False  # trained once per training seed (`seeds`)
    launchable: bool = False  # may run as a DeepSpeed/accelerate job on several ranks
    policy: StagePolicy = field(default_factory=StagePolicy)  # default of `orchestration.<name>`


def needs_reward(cfg: Any) -> bool:
    """The recipe's preference method learns against a trained reward model."""
    method = METHODS.get(cfg.preference.method)
    return bool(method and method.needs_reward)


BASE = ("config:sft.model_path", "select.model_path")  # the pipeline's base model
STUDENT = ("model:distill.student", *BASE)  # the distillation student's base model
SFT_MODEL = "sft.model_path"
TEMPLATE = Input("template", ("sft.template",), soft=True)  # the template the SFT model was trained with
GENERATED = Input("generated", ("self_instruct.data_path",), soft=True)  # Self-Instruct rows, when enabled

# In flow order. `preference` runs the recipe's `preference.method` (a Method above).
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "select",
            "alignpipe.stages.select:run_select",
            ("model", "select", "data", "seed"),
            when=lambda cfg: not cfg.sft.model_path,
        ),
        Stage(
            "self_instruct",
            "alignpipe.stages.self_instruct:run_self_instruct",
            ("model", "self_instruct", "data", "seed"),
            inputs=(Input("generator", ("config:self_instruct.generator", *BASE)),),
            when=lambda cfg: cfg.self_instruct.enabled,
        ),
        Stage(
            "sft",
            "alignpipe.stages.sft:run_sft",
            ("model", "sft", "data", "formats", "distributed", "seed"),
            inputs=(Input("base", BASE), GENERATED),
            seeded=True,
            launchable=True,
        ),
        Stage(
            "reward",
            "alignpipe.stages.reward:run_reward",
            ("model", "reward", "data", "distributed", "seed"),
            inputs=(Input("sft", ("config:reward.model_path", SFT_MODEL)), TEMPLATE),
            when=needs_reward,
            preference_step=True,
            seeded=True,
        ),
        Stage(
            "preference",
            "",
            ("model", "preference", "data", "formats", "distributed", "seed"),
            inputs=(
                Input("sft", ("config:preference.model_path", SFT_MODEL)),
                TEMPLATE,
                Input("reward", ("reward.model_path",), when=needs_reward),
            ),
            preference_step=True,
            seeded=True,
        ),
        Stage(
            "student_sft",
            "alignpipe.stages.sft:run_student_sft",
            ("model", "sft", "distill", "data", "formats", "distributed", "seed"),  # distill.lora: the student's
            inputs=(Input("base", STUDENT), GENERATED),
            when=lambda cfg: cfg.distill.enabled,
            seeded=True,
            launchable=True,
        ),
        Stage(
            "distill",
            "alignpipe.stages.distill:run_distill",
            ("model", "sft", "distill", "data", "formats", "seed"),
            inputs=(
                Input("teacher", ("config:distill.teacher", SFT_MODEL)),
                Input("student", STUDENT),
                Input(
                    "student_sft",
                    ("student_sft.model_path",),
                    when=lambda cfg: cfg.distill.mode == "logits" and cfg.distill.start == "sft",
                ),
                TEMPLATE,
                GENERATED,
            ),
            when=lambda cfg: cfg.distill.enabled,
            seeded=True,
        ),
        Stage(
            "evaluate",
            "alignpipe.stages.evaluate:run_evaluate",
            ("model", "evaluate", "data", "formats", "seed"),
            inputs=(
                # The models it scores, by label (`preference` is labelled by its method); `evaluate.models`
                # picks among them, the run's final model always scored (alignpipe.flows.runner.scored).
                Input(
                    "models",
                    soft=True,
                    labels=(
                        ("base", BASE),
                        ("sft", (SFT_MODEL,)),
                        ("preference", ("preference.model_path",)),
                        ("teacher", ("distill.teacher_model",)),
                        ("student_sft", ("student_sft.model_path",)),
                        ("student_distill", ("distill.model_path",)),
                    ),
                ),
                TEMPLATE,
                Input("reward", ("reward.model_path",), soft=True),  # a trained reward model also judges
            ),
        ),
    )
}

PREFERENCE_METHODS = tuple(METHODS)
NEEDS_REWARD = tuple(m.name for m in METHODS.values() if m.needs_reward)


def stage_of(name: str) -> Stage:
    """The Stage a name runs: a stage's own name, or a preference method's (the `preference` stage)."""
    return STAGES["preference" if name in METHODS else name]


def launchable(name: str) -> bool:
    """Whether the stage or method `name` may run as a multi-rank job."""
    return METHODS[name].launchable if name in METHODS else STAGES[name].launchable


def entry(name: str) -> Callable[..., Any]:
    """The function that runs a stage or a preference method. Imported on first use: each stage
    module pulls in its trainers (TRL, datasets), which commands like `validate` never need."""
    target = METHODS[name].entry if name in METHODS else STAGES[name].entry
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)
