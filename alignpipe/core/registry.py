"""The one list of the pipeline's stages and preference methods. Every other list (config
choices, the flow's order and cache keys, the CLI's stage names, what can be launched on several
ranks) is derived from here.

Adding a preference method: one `Method` entry here, and its TRL config block in the recipes.
Adding a stage: one module under `stages/` with its entry function, and one `Stage` entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A step of the flow. `entry` is `module:function`; the function takes the config and the
    stage's upstream inputs as keyword arguments and returns a StageResult."""

    name: str
    entry: str
    sections: tuple[str, ...]  # config sections its result depends on (its cache key)
    inputs: tuple[str, ...] = ()  # upstream inputs, passed by name (e.g. base, sft, template)
    seeded: bool = False  # trained once per training seed (`seeds`)
    launchable: bool = False  # may run as a DeepSpeed/accelerate job on several ranks


@dataclass(frozen=True)
class Method:
    """A preference method: the TRL trainer it uses and how the flow treats it."""

    name: str
    trl_kind: str  # key of alignpipe.core.trl_api's trainer table
    entry: str  # `module:function` that trains it
    fixed: dict[str, Any] = field(default_factory=dict)  # TRL config values the method sets (a recipe's value wins)
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
        Method("dpo", "dpo", _OFFLINE, fixed=_PRECOMPUTE, has_reference=True, launchable=True),
        Method("kto", "kto", _OFFLINE, fixed=_PRECOMPUTE, has_reference=True, launchable=True),
        Method("orpo", "orpo", _OFFLINE, launchable=True),
        Method("simpo", "cpo", _OFFLINE, fixed={"loss_type": "simpo", "cpo_alpha": 0.0}, launchable=True),
        Method("ppo", "ppo", "alignpipe.stages.ppo:run_ppo", needs_reward=True, has_reference=True),
        Method("rloo", "rloo", _ONLINE, needs_reward=True, has_reference=True),
        Method("grpo", "grpo", _ONLINE, needs_reward=True, has_reference=True),
    )
}

# In flow order. `preference` runs the recipe's `preference.method` (a Method above).
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("select", "alignpipe.stages.select:run_select", ("model", "select", "data", "seed")),
        Stage(
            "self_instruct",
            "alignpipe.stages.self_instruct:run_self_instruct",
            ("model", "self_instruct", "data", "seed"),
            inputs=("generator",),
        ),
        Stage(
            "sft",
            "alignpipe.stages.sft:run_sft",
            ("model", "sft", "data", "formats", "distributed", "seed"),
            inputs=("base", "generated"),
            seeded=True,
            launchable=True,
        ),
        Stage(
            "reward",
            "alignpipe.stages.reward:run_reward",
            ("model", "reward", "data", "distributed", "seed"),
            inputs=("sft", "template"),
            seeded=True,
        ),
        Stage(
            "preference",
            "",
            ("model", "preference", "data", "formats", "distributed", "seed"),
            inputs=("sft", "template", "reward"),
            seeded=True,
        ),
        Stage(
            "student_sft",
            "alignpipe.stages.sft:run_student_sft",
            ("model", "sft", "data", "formats", "distributed", "seed"),
            inputs=("base", "generated"),
            seeded=True,
            launchable=True,
        ),
        Stage(
            "distill",
            "alignpipe.stages.distill:run_distill",
            ("model", "sft", "distill", "data", "formats", "seed"),
            inputs=("teacher", "student", "student_sft", "template", "generated"),
            seeded=True,
        ),
        Stage(
            "evaluate",
            "alignpipe.stages.evaluate:run_evaluate",
            ("model", "evaluate", "data", "formats", "seed"),
            inputs=("models", "template", "reward"),
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
