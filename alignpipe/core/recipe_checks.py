"""Checks on a loaded recipe's values (types are already checked by the loader). They report
every problem at once, each naming the key and the fix, and never change the config."""

from __future__ import annotations

import dataclasses
import difflib
import json
import netrc
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from alignpipe.core import gguf_api, trl_api
from alignpipe.core.config import (
    DATA_FORMATS,
    DISTILL_LABELS,
    DISTILL_MODES,
    DISTILL_STARTS,
    DTYPES,
    EVAL_CHECKS,
    EVAL_MODELS,
    LAUNCHERS,
    PREFERENCE_METHODS,
    TEMPLATES,
    PipelineConfig,
    StagePolicy,
    StudentSpec,
)
from alignpipe.core.files import written_as_path
from alignpipe.core.registry import METHODS

# DeepSpeed keys that TrainingArguments fills when "auto", and the TRL fields that own them.
_DS_OWNED = {
    "train_micro_batch_size_per_gpu": ("per_device_train_batch_size",),
    "train_batch_size": ("per_device_train_batch_size", "gradient_accumulation_steps"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps",),
    "gradient_clipping": ("max_grad_norm",),
    "bf16.enabled": ("bf16",),
    "fp16.enabled": ("fp16",),
    "optimizer.params.lr": ("learning_rate",),
    "optimizer.params.betas": ("adam_beta1", "adam_beta2"),
    "optimizer.params.eps": ("adam_epsilon",),
    "optimizer.params.weight_decay": ("weight_decay",),
    "scheduler.params.warmup_max_lr": ("learning_rate",),
    "scheduler.params.warmup_num_steps": ("warmup_steps",),
}


# ---------------------------------------------------------------------------------------------
# Checks on values (types are already checked)


def check(cfg: PipelineConfig, problems: list[str], where: str) -> None:
    """Append one line per problem with the config's values to `problems`."""

    def bad(key: str, msg: str) -> None:
        problems.append(f"{where}: '{key}' {msg}")

    if not cfg.experiment:
        bad("experiment", "must be a non-empty name")
    elif isinstance(cfg.experiment, str) and not _NAME.fullmatch(cfg.experiment):
        bad(
            "experiment",
            f"must be a plain name (letters, digits, '.', '_', '-'; no '/' or '..'), got {cfg.experiment!r}: "
            "it names a folder under the state dir",
        )
    if cfg.seeds and len(set(cfg.seeds)) != len(cfg.seeds):
        bad("seeds", f"must be distinct integers (e.g. [42, 43, 44]), got {cfg.seeds!r}")
    if not cfg.model.candidates and not cfg.sft.model_path:
        bad("model.candidates", "is empty: list at least one model (a hub id, a local dir or a `tiny:` spec)")
    names = set()
    for i, cand in enumerate(cfg.model.candidates):
        key = f"model.candidates[{i}]"
        if cand is None:
            continue
        if (cand.path is None) == (cand.tiny is None):
            bad(key, "needs exactly one of 'path' (hub id or local dir) or 'tiny' (a spec)")
            continue
        if cand.name in names:
            bad(f"{key}.name", f"repeats '{cand.name}': give each candidate its own name")
        names.add(cand.name)
        if cand.path:
            _check_model(
                f"{key}.path",
                cand.source,
                bad,
                f"model directory {cand.path} does not exist (build it, or give a hub id)",
            )
        if cand.tiny is not None:
            t = cand.tiny
            if t.arch not in ("llama", "qwen2"):
                bad(f"{key}.tiny.arch", f"must be llama or qwen2, got {t.arch!r}")
            if _positive(t.hidden_size, t.num_heads) and t.hidden_size % t.num_heads:
                bad(f"{key}.tiny.hidden_size", f"({t.hidden_size}) must be divisible by num_heads ({t.num_heads})")
            if _positive(t.num_heads, t.num_kv_heads) and t.num_heads % t.num_kv_heads:
                bad(f"{key}.tiny.num_heads", f"({t.num_heads}) must be divisible by num_kv_heads ({t.num_kv_heads})")
    if cfg.model.dtype not in DTYPES:
        bad("model.dtype", f"must be one of {', '.join(DTYPES)}, got {cfg.model.dtype!r}")
    _check_data(cfg, bad)
    _check_self_instruct(cfg, bad)
    if cfg.sft.template not in TEMPLATES:
        bad("sft.template", f"must be one of {', '.join(TEMPLATES)}, got {cfg.sft.template!r}")
    for section in ("sft", "preference", "reward"):
        mp = getattr(cfg, section).model_path
        _check_model(
            f"{section}.model_path",
            mp,
            bad,
            f"model directory {mp} does not exist (or give a hub id such as Qwen/Qwen2.5-0.5B)",
        )
    if (
        cfg.preference.method is not None and cfg.preference.method not in PREFERENCE_METHODS
    ):  # None: mistyped, reported
        bad("preference.method", f"must be one of {', '.join(PREFERENCE_METHODS)}, got {cfg.preference.method!r}")
    _check_locked(cfg, bad)
    for m in cfg.evaluate.models:
        if m not in EVAL_MODELS:
            bad(
                "evaluate.models",
                f"entries must be among {', '.join(EVAL_MODELS)} (or the method, {cfg.preference.method!r}), "
                f"got {m!r}",
            )
    if isinstance(cfg.distributed.num_processes, int) and cfg.distributed.num_processes < 1:
        bad("distributed.num_processes", f"must be >= 1, got {cfg.distributed.num_processes}")
    _check_distributed(cfg, bad)
    _check_orchestration(cfg, bad)
    method = cfg.preference.method if cfg.preference.method in PREFERENCE_METHODS else "dpo"
    for section, kind, values in (
        ("sft", "sft", cfg.sft.trl),
        ("reward", "reward", cfg.reward.trl),
        ("preference", METHODS[method].trl_kind, cfg.preference.trl),
    ):
        for key, msg in trl_api.check_config(kind, values):
            bad(f"{section}.{key}", msg)
        _check_training_values(section, values, bad)
    for other, values in getattr(cfg.preference, "_methods", {}).items():
        _check_training_values(f"preference.{other}", values, bad)
    _check_training_values("distill.sequence", cfg.distill.sequence, bad)
    _check_training_values("distill.logits", cfg.distill.logits, bad)
    for section in ("sft", "preference", "reward", "distill"):
        _check_lora(f"{section}.lora", getattr(cfg, section).lora, bad)
    for other, values in getattr(cfg.preference, "_methods", {}).items():
        if other != method:  # the chosen method's sub-section is checked merged, above
            for key, msg in trl_api.check_config(METHODS[other].trl_kind, values):
                bad(f"preference.{other}.{key}", msg)
    _check_distill(cfg, bad)
    _check_report_to(cfg.tracking.report_to, bad)
    if "wandb" in cfg.tracking.report_to and not wandb_usable():
        bad(
            "tracking.report_to",
            "includes wandb but no W&B credentials are set (WANDB_API_KEY or `wandb login`): "
            "run `export WANDB_MODE=offline` to log locally, or `wandb login`, or drop wandb from tracking.report_to",
        )


def _check_data(cfg: PipelineConfig, bad) -> None:
    d = cfg.data
    for name, kind in (
        ("sft", "sft"),
        ("preference", "preference"),
        ("eval", "eval"),
        ("eval_preference", "preference"),
    ):
        entry = getattr(d, name)
        entries = entry if isinstance(entry, list) else [entry]
        if name != "eval_preference" and not any(s is not None and s.path for s in entries):
            bad(f"data.{name}.path", "is not set: give the data file for this stage")
        for i, src in enumerate(entries):
            if src is None:
                continue
            key = f"data.{name}[{i}]" if isinstance(entry, list) else f"data.{name}"
            if isinstance(entry, list) and not src.path:
                bad(f"{key}.path", "is not set: every source of a mixture needs a path")
            _check_source(src, key, kind, bad)
            if src.check is not None and name != "eval":
                bad(f"{key}.check", "applies to data.eval sources only (how their answers are graded): remove it")
            elif src.check is not None and src.check not in EVAL_CHECKS:
                bad(f"{key}.check", f"must be one of {', '.join(EVAL_CHECKS)}, got {src.check!r}")
            if isinstance(src.offset, int) and src.offset < 0:
                bad(f"{key}.offset", f"must be >= 0, got {src.offset}")
            if isinstance(src.weight, (int, float)) and src.weight <= 0:
                bad(f"{key}.weight", f"must be > 0, got {src.weight}")
            if isinstance(src.max_rows, int) and src.max_rows < 1:
                bad(f"{key}.max_rows", f"must be >= 1, got {src.max_rows}")
    if d.safety.path:
        _check_source(d.safety, "data.safety", "sft", bad)
    if isinstance(d.safety.fraction, float) and not 0 <= d.safety.fraction < 1:
        bad("data.safety.fraction", f"must be in [0, 1), got {d.safety.fraction}")
    elif isinstance(d.safety.fraction, float) and d.safety.fraction > 0 and not d.safety.path:
        bad("data.safety.path", "is not set but data.safety.fraction > 0: give a file of refusal rows")
    if d.on_bad_rows not in ("fail", "skip"):
        bad("data.on_bad_rows", f"must be fail or skip, got {d.on_bad_rows!r}")
    if d.decontaminate not in ("remove", "fail", "off"):
        bad("data.decontaminate", f"must be remove, fail or off, got {d.decontaminate!r}")
    if isinstance(d.ngram, int) and d.ngram < 1:
        bad("data.ngram", f"must be >= 1, got {d.ngram}")
    v = cfg.formats.variation
    if isinstance(v, float) and not 0 <= v <= 1:
        bad("formats.variation", f"must be in [0, 1], got {v}")
    if isinstance(cfg.formats.robustness_rows, int) and cfg.formats.robustness_rows < 0:
        bad("formats.robustness_rows", f"must be >= 0, got {cfg.formats.robustness_rows}")


def _check_source(src, key: str, kind: str, bad) -> None:
    if src.path and _looks_like_file(src.path) and not Path(src.path).expanduser().exists():
        bad(f"{key}.path", f"file {src.path} does not exist")
    if src.format != "auto" and src.format not in DATA_FORMATS[kind]:
        bad(
            f"{key}.format",
            f"must be auto or one of {', '.join(DATA_FORMATS[kind])} for {kind} data, got {src.format!r}",
        )


def _check_self_instruct(cfg: PipelineConfig, bad) -> None:
    si = cfg.self_instruct
    if si.enabled and not si.seed_tasks:
        bad("self_instruct.seed_tasks", "is not set: give a seed task file in the Self-Instruct format")
    if si.seed_tasks and not Path(si.seed_tasks).expanduser().is_file():
        bad("self_instruct.seed_tasks", f"file {si.seed_tasks} does not exist")
    for name in ("rounds", "prompts_per_round", "prompt_instructions", "max_new_tokens", "min_words", "max_words"):
        value = getattr(si, name)
        if isinstance(value, int) and value < 1:
            bad(f"self_instruct.{name}", f"must be >= 1, got {value}")
    if isinstance(si.rouge_threshold, float) and not 0 < si.rouge_threshold <= 1:
        bad("self_instruct.rouge_threshold", f"must be in (0, 1], got {si.rouge_threshold}")


def _check_distributed(cfg: PipelineConfig, bad) -> None:
    d = cfg.distributed
    if d.launcher not in LAUNCHERS:
        bad("distributed.launcher", f"must be one of {', '.join(LAUNCHERS)}, got {d.launcher!r}")
    if isinstance(d.master_port, int) and not 1024 <= d.master_port <= 65535:
        bad("distributed.master_port", f"must be a port between 1024 and 65535, got {d.master_port}")
    if d.hostfile and not Path(d.hostfile).is_file():
        bad("distributed.hostfile", f"hostfile {d.hostfile} does not exist")
    elif d.node_rank is not None:
        if not d.hostfile:
            bad("distributed.node_rank", "needs distributed.hostfile (one line per node, node 0 first)")
        elif not 0 <= d.node_rank < d.nodes:
            bad("distributed.node_rank", f"must be in 0..{d.nodes - 1} (the hostfile's nodes), got {d.node_rank}")
        if not d.master_addr:
            bad("distributed.master_addr", "is not set: with node_rank, give node 0's address (its ranks meet there)")
    if not d.deepspeed:
        return
    ds = load_deepspeed(d.deepspeed)
    if isinstance(ds, str):
        bad("distributed.deepspeed", ds)
        return
    name = Path(d.deepspeed).name
    for key, owners in _DS_OWNED.items():
        value = _dotted(ds, key)
        if value is None or value == "auto":
            continue
        for section in ("sft", "reward", "preference"):
            both = [o for o in owners if o in getattr(cfg, section).trl]
            if both:
                bad(
                    "distributed.deepspeed",
                    f"{name} sets '{key}' = {value!r} and '{section}.{both[0]}' sets it too: "
                    f'set in both places; make the DeepSpeed value "auto" (TrainingArguments owns it)',
                )


def _check_locked(cfg: PipelineConfig, bad) -> None:
    """A method's locked TRL values define it (IPO is DPO with loss_type ipo): a recipe may not change them."""
    method = METHODS.get(cfg.preference.method)
    for key, locked in (method.locked if method else {}).items():
        given = cfg.preference.trl.get(key, locked)
        if given not in (locked, [locked]):
            same = [m.name for m in METHODS.values() if m.trl_kind == method.trl_kind and m.locked.get(key) is None]
            fix = f"use preference.method={same[0]} for {key} {given!r}, or remove" if same else "remove"
            bad(
                f"preference.{key}",
                f"is {given!r}, but preference.method={method.name} locks it to {locked!r} (it defines the method); "
                f"{fix} preference.{key}",
            )


def _check_orchestration(cfg: PipelineConfig, bad) -> None:
    o = cfg.orchestration
    for f in dataclasses.fields(o):
        policy = getattr(o, f.name)
        if not isinstance(policy, StagePolicy):
            continue
        for key in ("retries", "retry_delay_seconds"):
            v = getattr(policy, key)
            if isinstance(v, int) and v < 0:
                bad(f"orchestration.{f.name}.{key}", f"must be >= 0, got {v}")
        t = policy.timeout_seconds
        if isinstance(t, int) and t <= 0:
            bad(
                f"orchestration.{f.name}.timeout_seconds",
                f"must be a positive number of seconds (or null for none), got {t}",
            )
    p = cfg.promote
    if isinstance(p.tolerance, float) and p.tolerance < 0:
        bad("promote.tolerance", f"must be >= 0, got {p.tolerance}")
    if p.enabled and not p.metrics:
        bad(
            "promote.metrics", "is empty: list the evaluation metrics the gate compares (or set promote.enabled=false)"
        )


# TRL distillation fields our `distill` keys set, for both trainers at once.
_DISTILL_OWNED = {"lmbda": "lmbda", "max_new_tokens": "max_new_tokens", "max_completion_length": "max_new_tokens"}


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Trainer fields whose nonsensical values TRL accepts and then fails on (or trains wrongly with).
_POSITIVE = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs")
_STEPS = ("save_steps", "logging_steps", "eval_steps")


def _check_training_values(section: str, values: dict[str, Any], bad) -> None:
    for key in _POSITIVE:
        v = values.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            bad(f"{section}.{key}", f"must be > 0, got {v}")
    steps = values.get("max_steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and (steps == 0 or steps < -1):
        bad(f"{section}.max_steps", f"must be > 0 (or -1: train num_train_epochs), got {steps}")
    for key in _STEPS:
        v = values.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0:
            bad(f"{section}.{key}", f"must be > 0, got {v}")


def _check_lora(key: str, lora, bad) -> None:
    if lora is None:
        return
    if isinstance(lora.r, int) and lora.r < 1:
        bad(f"{key}.r", f"must be >= 1 (the adapter rank), got {lora.r}")
    if isinstance(lora.alpha, int) and lora.alpha <= 0:
        bad(f"{key}.alpha", f"must be > 0, got {lora.alpha}")
    if isinstance(lora.dropout, float) and not 0 <= lora.dropout < 1:
        bad(f"{key}.dropout", f"must be in [0, 1), got {lora.dropout}")
    layers = lora.layers_to_transform
    if layers is not None and not all(isinstance(i, int) and i >= 0 for i in layers):
        bad(f"{key}.layers_to_transform", f"must be decoder layer indices (0, 1, ...), got {layers!r}")
    if layers is not None and isinstance(lora.target_modules, str):
        bad(
            f"{key}.target_modules",
            f"is {lora.target_modules!r}, but peft needs a list of module names with layers_to_transform: "
            "e.g. [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
        )


def _check_student_layers(cfg: PipelineConfig, spec: StudentSpec, bad) -> None:
    """`distill.student.layers` is >= 1 and below its source's decoder layers, as its tiny spec or its
    dir's config.json says (a hub id's is checked when its config is fetched, before its weights)."""
    if spec.layers is None:
        bad("distill.student.layers", "is required: how many of the source's first decoder layers the student keeps")
        return
    if not isinstance(spec.layers, int):
        return
    cand = next((c for c in cfg.model.candidates if c is not None and c.name == spec.from_), None)
    total = None
    if cand is not None and cand.tiny is not None:
        total = cand.tiny.num_layers
    elif spec.from_:
        try:
            config = json.loads((Path(cand.path if cand else spec.from_).expanduser() / "config.json").read_text())
            total = config.get("text_config", config).get("num_hidden_layers")
        except (OSError, ValueError, AttributeError):
            pass  # not a local dir: a hub id
    if spec.layers < 1 or (isinstance(total, int) and spec.layers >= total):
        upto = f"between 1 and {total - 1} ({spec.from_} has {total} decoder layers)" if total else ">= 1"
        bad("distill.student.layers", f"must be {upto}, got {spec.layers}")
    adapted = cfg.distill.lora.layers_to_transform if cfg.distill.lora else None
    if adapted and any(isinstance(i, int) and i >= spec.layers for i in adapted):
        bad(
            "distill.lora.layers_to_transform",
            f"names layers up to {max(adapted)}, but the student keeps {spec.layers} (distill.student.layers): "
            f"use indices below {spec.layers}",
        )


def _check_distill(cfg: PipelineConfig, bad) -> None:
    d = cfg.distill
    if d.mode not in DISTILL_MODES:
        bad("distill.mode", f"must be one of {', '.join(DISTILL_MODES)}, got {d.mode!r}")
    if d.start not in DISTILL_STARTS:
        bad("distill.start", f"must be one of {', '.join(DISTILL_STARTS)}, got {d.start!r}")
    if isinstance(d.lmbda, float) and not 0 <= d.lmbda <= 1:
        bad("distill.lmbda", f"must be in [0, 1] (the share of on-policy batches), got {d.lmbda}")
    if isinstance(d.max_new_tokens, int) and d.max_new_tokens < 1:
        bad("distill.max_new_tokens", f"must be >= 1, got {d.max_new_tokens}")
    _check_model(
        "distill.teacher",
        d.teacher,
        bad,
        f"model directory {d.teacher} does not exist (give a model dir or a hub id, or leave it unset "
        "to distil this pipeline's SFT model)",
    )
    names = [c.name for c in cfg.model.candidates if c is not None]
    student, key = d.student, "distill.student"
    if isinstance(d.student, StudentSpec):
        student, key = d.student.from_, "distill.student.from"
        _check_student_layers(cfg, d.student, bad)
    if isinstance(d.student, StudentSpec) and not student:
        bad(key, "is required: the model whose first layers make the student (a candidates name, model dir or hub id)")
    elif d.enabled and student and student not in names:  # a candidate name means this recipe's candidates
        if written_as_path(student) or gguf_api.is_gguf(student):
            _check_model(key, student, bad, f"model directory {student} does not exist")
        elif "/" not in student:
            bad(
                key,
                f"{student!r} is not a model.candidates name ({', '.join(names) or 'none'}), "
                "a model dir or a hub id (org/name)",
            )
    for key, ours in _DISTILL_OWNED.items():
        if key in d.logits:
            bad(f"distill.logits.{key}", f"is set by distill.{ours}: set it there (one value for both trainers)")
    for block, kind, values in (
        ("sequence", "sft", cfg.student_sft_args),
        ("logits", d.trl_kind if d.mode == "logits" else "distill", d.logits),
    ):
        fields = trl_api.config_fields(kind)
        for key in getattr(d, block):
            if key not in fields and key not in _DISTILL_OWNED:
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                hint = f"; did you mean 'distill.{block}.{close[0]}'?" if close else ""
                bad(f"distill.{block}.{key}", f"is not a field of trl.{trl_api.config_class_name(kind)}{hint}")
        known = {k: v for k, v in values.items() if k in fields}
        for key, msg in trl_api.check_config(kind, known):
            bad(f"distill.{block}.{key}", msg)
    labels = ["final", *EVAL_MODELS, *PREFERENCE_METHODS, *(DISTILL_LABELS if d.enabled else ())]
    if cfg.promote.candidate not in labels:
        more = "" if d.enabled else f" ({', '.join(DISTILL_LABELS)} need distill.enabled=true)"
        bad("promote.candidate", f"must be one of {', '.join(labels)}, got {cfg.promote.candidate!r}{more}")


def check_tracking(cfg: PipelineConfig, bad) -> None:
    """A tracking server (http URI) answers within a few seconds, or the one line to fix it."""
    uri = cfg.tracking_uri
    parts = urlsplit(uri)
    if parts.scheme == "sqlite":
        _check_sqlite_store(Path(uri[len("sqlite:///") :]), bad)
        return
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=3).close()
    except OSError as e:
        bad(
            "tracking.uri",
            f"the MLflow server at {uri} does not answer ({e.strerror or e}); start it (`alignpipe up`) "
            "or point tracking.uri / MLFLOW_TRACKING_URI at a running one",
        )


def _check_sqlite_store(db: Path, bad) -> None:
    """An existing MLflow sqlite store is a readable SQLite database (never silently replaced)."""
    if not db.is_file():
        return
    fix = "restore it from a backup, or move it aside to start a new store (its run history stays in it)"
    if db.stat().st_size == 0:
        bad("tracking.uri", f"the MLflow store {db} is empty (0 bytes), not a database; {fix}")
        return
    try:
        with open(db, "rb") as f:
            header = f.read(16)
    except OSError as e:
        bad("tracking.uri", f"the MLflow store {db} cannot be read ({e.strerror}); check its permissions")
        return
    if header != b"SQLite format 3\x00":
        bad("tracking.uri", f"the MLflow store {db} is not an SQLite database (damaged?); {fix}")


def load_deepspeed(path: str) -> dict | str:
    """The DeepSpeed JSON as a dict, or a one-line problem naming the file."""
    p = Path(path)
    if not p.is_file():
        return f"DeepSpeed config {path} does not exist"
    try:
        loaded = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
    except UnicodeDecodeError as e:
        return f"{path}: not UTF-8 text (byte {e.start})"
    if not isinstance(loaded, dict):
        return f"{path}: a DeepSpeed config must be a JSON object, got {type(loaded).__name__}"
    return loaded


def _dotted(d: dict, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)
    return d


def _positive(*values: Any) -> bool:
    """All values are usable integers (a mistyped one is already reported and left as None)."""
    return all(isinstance(v, int) and v > 0 for v in values)


def _check_model(key: str, source: str | None, bad, missing_dir: str) -> None:
    """A model string that names a GGUF file it cannot convert, or a model dir that is missing."""
    if not source:
        return
    if gguf_api.is_gguf(source):
        problem = gguf_api.problem(source)
        if problem:
            bad(key, f"names a GGUF model that cannot be used: {problem}")
    elif written_as_path(source) and not Path(source).expanduser().is_dir():
        bad(key, missing_dir)


def _looks_like_file(path: str) -> bool:
    """A data source meant as a local file (a hub id has no suffix and is not written as a path)."""
    return written_as_path(path) or path.startswith(".") or Path(path).suffix != ""


def wandb_usable() -> bool:
    """W&B can start a run without prompting: offline/disabled mode, or an API key (env or ~/.netrc).

    Read the way wandb reads them, without importing wandb."""
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = Path(os.environ.get("NETRC") or "~/.netrc").expanduser()
    try:
        return bool(path.is_file() and (netrc.netrc(path).authenticators(host) or (None, None, None))[2])
    except (netrc.NetrcParseError, OSError):
        return False


def _check_report_to(names: list[str], bad) -> None:
    """Trainer integrations: known to transformers, installed, and not MLflow (built in already)."""
    if not names:
        return
    # only when integrations are named: transformers' integration registry is slow to import
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in names:
        if name == "mlflow":
            bad(
                "tracking.report_to",
                "lists mlflow: every stage already logs to MLflow (tracking.uri); remove it "
                "(the trainer's own MLflow callback would open a second run)",
            )
        elif name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(name, list(INTEGRATION_TO_CALLBACK), n=1)
            bad(
                "tracking.report_to",
                f"unknown integration {name!r}"
                + (
                    f"; did you mean {close[0]!r}?"
                    if close
                    else f"; known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"
                ),
            )
        elif name not in get_available_reporting_integrations():
            bad("tracking.report_to", f"lists {name}, which is not installed (pip install it, or remove it)")
