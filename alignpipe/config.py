"""Typed pipeline config: dataclass defaults <- YAML recipe <- `--set key=value` overrides.

Every problem (unknown key, wrong type, bad value, missing file) is collected and reported at
once, before any compute. The `sft`, `reward` and `preference` sections also accept any field
of TRL's own config class (SFTConfig, RewardConfig, and the chosen method's: DPOConfig, KTOConfig,
ORPOConfig, CPOConfig, PPOConfig, RLOOConfig, GRPOConfig): those pass straight through.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import netrc
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import re

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-4` as a string; accept the exponent forms people write for rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$|^[-+]?\.[0-9_]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


class ConfigError(Exception):
    """One or more config problems; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class TinySpec:
    """A small Llama- or Qwen-style model built and briefly pretrained locally (no Hub)."""

    arch: str = "llama"  # llama | qwen2
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int | None = None  # default: 3 x hidden_size
    max_position_embeddings: int = 512
    vocab_size: int = 2048  # upper bound for the BPE trainer; the model uses len(tokenizer)
    pretrain_steps: int = 200
    pretrain_lr: float = 3e-3
    pretrain_batch_size: int = 16
    pretrain_block_size: int = 128
    seed: int = 0


@dataclass
class Candidate:
    """A pretrained model to consider: a hub id or local dir (`path`), or a `tiny` spec."""

    name: str = ""
    path: str | None = None
    tiny: TinySpec | None = None
    revision: str | None = None


@dataclass
class ModelSection:
    candidates: list[Candidate] = field(default_factory=list)
    max_params: int | None = None  # budget: candidates above it are not scored
    max_memory_gb: float | None = None  # budget on the estimated full fine-tuning memory
    trust_remote_code: bool = False
    dtype: str = "float32"  # float32 | bfloat16 | float16


@dataclass
class DataSource:
    """One data file, `save_to_disk` folder or hub id, and its share of the stage's mixture."""

    path: str | None = None
    format: str = "auto"  # auto-detected from the fields; see alignpipe.data.FORMATS
    split: str = "train"  # for hub ids and saved DatasetDicts
    weight: float = 1.0  # share of its rows used (0.5: half, 2: each row twice)
    max_rows: int | None = None  # cap on its rows after weighting
    category: str | None = None  # category of rows that carry none
    category_field: str = "category"  # the field holding a row's category (e.g. task_type)


@dataclass
class SafetyMix:
    """Refusal rows mixed into SFT so they make up `fraction` of the training rows."""

    path: str | None = None
    format: str = "auto"
    split: str = "train"
    category: str | None = None  # only rows of this category (e.g. safety); None: all rows
    fraction: float = 0.0


@dataclass
class DataSection:
    sft: DataSource | list[DataSource] = field(default_factory=DataSource)
    preference: DataSource | list[DataSource] = field(default_factory=DataSource)
    eval: DataSource | list[DataSource] = field(default_factory=DataSource)
    eval_preference: DataSource | list[DataSource] = field(default_factory=DataSource)
    validation_rows: int = 64  # rows hashed out of the SFT/preference data for select and eval_loss
    on_bad_rows: str = "fail"  # fail | skip (skipped rows are counted by reason and logged)
    dedup: bool = True  # drop exact duplicate training rows
    decontaminate: str = "remove"  # remove | fail | off: training rows overlapping any eval set
    ngram: int = 13  # n-gram length for decontamination
    heldout_categories: list[str] = field(default_factory=list)  # kept out of training entirely
    safety: SafetyMix = field(default_factory=SafetyMix)


@dataclass
class FormatsSection:
    """Format variation in training, and format robustness in evaluation."""

    variation: float = 0.0  # share of training rows rendered with a varied template
    robustness_rows: int = 48  # eval rows also scored under templates never used in training (0: off)


@dataclass
class SelfInstructSection:
    """Self-Instruct bootstrapping (Wang et al. 2023) before SFT; its rows join the SFT mixture."""

    enabled: bool = False
    seed_tasks: str | None = None  # seed tasks in the Self-Instruct format ({instruction, instances, ...})
    generator: str | None = None  # model path or hub id; default: the selected base model
    rounds: int = 2
    prompts_per_round: int = 8  # generation prompts per round
    prompt_instructions: int = 8  # instructions shown per prompt (paper: 6 seed + 2 generated)
    max_new_tokens: int = 96
    temperature: float = 0.7
    top_p: float = 0.5
    rouge_threshold: float = 0.7  # keep an instruction only if ROUGE-L < this against every one in the pool
    min_words: int = 3
    max_words: int = 150


@dataclass
class SelectSection:
    perplexity_rows: int = 64
    generation_rows: int = 24
    max_new_tokens: int = 16
    tie_tolerance: float = 0.02  # perplexities within 2% count as tied; generation score decides


@dataclass
class LoraSection:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class SFTSection:
    """Our keys; any other key must be a field of trl.SFTConfig and passes through."""

    model_path: str | None = None  # default: the model picked by `select`
    template: str = "alpaca"  # alpaca | chat
    lora: LoraSection | None = None
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class PreferenceSection:
    """Our keys; any other key must be a field of the chosen method's TRL config and passes through.

    A sub-section named after a method (`dpo: {...}`, `ppo: {...}`) holds that method's TRL fields
    for this recipe; it is used only when that method runs, and keys set directly under
    `preference` win over it. `trl` is the result for the chosen method."""

    method: str = "dpo"  # dpo | ppo | kto | orpo | simpo | rloo | grpo
    model_path: str | None = None  # default: the SFT stage's output
    lora: LoraSection | None = None
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardSection:
    """The reward model (for ppo, rloo, grpo). Our keys; any other key must be a field of
    trl.RewardConfig and passes through."""

    model_path: str | None = None  # start from this model; default: the SFT stage's output
    lora: LoraSection | None = None
    trl: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateSection:
    models: list[str] = field(default_factory=lambda: ["base", "sft", "preference"])  # preference: labelled by its method
    max_new_tokens: int = 24
    batch_size: int = 32
    num_samples: int = 24  # sample generations logged per model
    beta: float = 0.1  # for implicit reward margins against the SFT reference


@dataclass
class DistributedSection:
    """More than one process, or a DeepSpeed config, runs sft/dpo through `alignpipe.launch`."""

    num_processes: int = 1  # processes per node (GPUs; on a CPU box, CPU ranks)
    deepspeed: str | None = None  # a DeepSpeed JSON, e.g. deepspeed_configs/zero3.json
    launcher: str = "deepspeed"  # deepspeed | accelerate
    master_port: int = 29500
    hostfile: str | None = None  # multi-node: DeepSpeed hostfile ("host slots=N" per line)


@dataclass
class TrackingSection:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite under the state dir
    report_to: list[str] = field(default_factory=list)  # extra trainer integrations, e.g. wandb
    log_model_weights: bool = True  # copy each produced model's files into the MLflow artifact store


@dataclass
class StagePolicy:
    """How the Prefect flow runs one stage. A retry of a training stage resumes from its last
    checkpoint; a timeout stops the stage (a launched job's whole process group is killed)."""

    retries: int = 0
    retry_delay_seconds: int = 30
    timeout_seconds: int | None = None


@dataclass
class OrchestrationSection:
    select: StagePolicy = field(default_factory=StagePolicy)
    self_instruct: StagePolicy = field(default_factory=StagePolicy)
    sft: StagePolicy = field(default_factory=StagePolicy)
    reward: StagePolicy = field(default_factory=StagePolicy)
    preference: StagePolicy = field(default_factory=StagePolicy)
    evaluate: StagePolicy = field(default_factory=StagePolicy)
    retrain_cron: str | None = None  # e.g. "0 3 * * 0": `pipeline/full` retrains on this schedule when served


@dataclass
class PromoteSection:
    """The gate before the final model gets the registry alias `champion`: on every listed metric
    it must be non-inferior to `baseline` on the same evaluation: the 95% interval of the paired
    difference (oriented so that positive is better) must have its lower bound >= -tolerance."""

    enabled: bool = True
    model_name: str | None = None  # registry name; default: the experiment name
    baseline: str = "sft"  # a model label of the evaluation; sft-only runs compare with base
    metrics: list[str] = field(default_factory=lambda: ["pref_accuracy", "acc_seen", "refusal_rate"])
    tolerance: float = 0.05  # non-inferiority margin per metric, in the metric's own units
    alias: str = "champion"


@dataclass
class PipelineConfig:
    experiment: str = "alignpipe"
    seed: int = 42  # data split, mixing and the tiny models' build; the training seed when `seeds` is unset
    # Training seeds: sft and the preference stage train once per seed, evaluate scores every
    # seed's models and reports means with intervals over items and seeds (`alignpipe run --seeds N`).
    seeds: list[int] | None = None
    state_dir: str | None = None  # default: $ALIGNPIPE_HOME or ./.alignpipe
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    select: SelectSection = field(default_factory=SelectSection)
    sft: SFTSection = field(default_factory=SFTSection)
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    reward: RewardSection = field(default_factory=RewardSection)
    evaluate: EvaluateSection = field(default_factory=EvaluateSection)
    formats: FormatsSection = field(default_factory=FormatsSection)
    self_instruct: SelfInstructSection = field(default_factory=SelfInstructSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)
    tracking: TrackingSection = field(default_factory=TrackingSection)
    orchestration: OrchestrationSection = field(default_factory=OrchestrationSection)
    promote: PromoteSection = field(default_factory=PromoteSection)
    source: str = field(default="", metadata={"internal": True})  # the YAML file it came from
    overrides: list[str] = field(default_factory=list, metadata={"internal": True})  # its --set items

    # -- derived locations ---------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return Path(self.state_dir or os.environ.get("ALIGNPIPE_HOME") or ".alignpipe").resolve()

    @property
    def training_seeds(self) -> list[int]:
        return list(self.seeds) if self.seeds else [self.seed]

    @property
    def run_dir(self) -> Path:
        return self.state_path / "runs" / self.experiment

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.state_path / 'mlflow.db'}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PREFERENCE_METHODS = ("dpo", "ppo", "kto", "orpo", "simpo", "rloo", "grpo")
TEMPLATES = ("alpaca", "chat")
DTYPES = ("float32", "bfloat16", "float16")
EVAL_MODELS = ("base", "sft", "preference")
# Keys whose relative values are file paths, resolved against the YAML file's folder.
_PATH_KEYS = {"path", "deepspeed", "model_path", "hostfile", "seed_tasks", "generator"}
LAUNCHERS = ("deepspeed", "accelerate")
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
# Loading


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML recipe, apply `key=value` overrides, build and check the typed config.

    Relative paths in the YAML file are relative to that file; in overrides, to the cwd.
    Raises ConfigError listing every problem found.
    """
    problems: list[str] = []
    raw: dict[str, Any] = {}
    source = ""
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"{path}: config file not found (give the path of a YAML recipe, e.g. configs/tiny.yaml)"])
        try:
            loaded = _yaml(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError([f"{path}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8"]) from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError([f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}"]) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the recipe must be a mapping of sections, got {type(loaded).__name__}"])
        raw = _resolve_paths(loaded, p.resolve().parent)
    for item in overrides or []:
        try:
            _apply_override(raw, item)
        except ValueError as e:
            problems.append(str(e))
    where = source or "config"
    cfg = _build(PipelineConfig, raw, "", problems, where)
    cfg.source = source
    cfg.overrides = list(overrides or [])
    _check(cfg, problems, where)
    if problems:
        raise ConfigError(problems)
    return cfg


def _resolve_paths(node: Any, base: Path) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _PATH_KEYS and isinstance(v, str) and _looks_local(v, base):
                v = str((base / v).resolve()) if not Path(v).is_absolute() else v
            out[k] = _resolve_paths(v, base)
        return out
    if isinstance(node, list):
        return [_resolve_paths(v, base) for v in node]
    return node


def _looks_local(value: str, base: Path) -> bool:
    """A relative path that exists next to the YAML file or is written as one (./, ../)."""
    if value.startswith(("./", "../", "/", "~")):
        return True
    return (base / value).exists() or value.endswith((".json", ".jsonl", ".yaml", ".parquet", ".csv"))


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ValueError(f"--set {item!r}: expected key=value, e.g. --set sft.max_steps=5")
    key, _, text = item.partition("=")
    try:
        value = _yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"--set {item!r}: '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def _passthrough_fields(cls: type, method: Any = None) -> tuple[str, set[str]] | None:
    """TRL config fields accepted next to our own keys in a section (None: no pass-through)."""
    from alignpipe import trl_api

    if cls is SFTSection:
        return "trl.SFTConfig", trl_api.config_fields("sft")
    if cls is RewardSection:
        return "trl.RewardConfig", trl_api.config_fields("reward")
    if cls is PreferenceSection:
        kind = trl_api.kind_of(method if method in PREFERENCE_METHODS else "dpo")
        return f"trl.{trl_api.config_class_name(kind)}", trl_api.config_fields(kind)
    return None


def _method_sections(raw: dict[str, Any], prefix: str, problems: list[str], where: str) -> dict[str, dict[str, Any]]:
    """Pop the per-method sub-sections (`preference.ppo: {...}`) out of `raw`, keys checked."""
    from alignpipe import trl_api

    found = {}
    for method in PREFERENCE_METHODS:
        if method not in raw:
            continue
        sub = raw.pop(method)
        if sub is None:
            continue
        kind = trl_api.kind_of(method)
        if not isinstance(sub, dict):
            problems.append(f"{where}: '{prefix}{method}' must be a mapping of trl.{trl_api.config_class_name(kind)} fields, got {sub!r}")
            continue
        fields = trl_api.config_fields(kind)
        for key in sub:
            if key not in fields:
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                hint = f"; did you mean '{prefix}{method}.{close[0]}'?" if close else ""
                problems.append(f"{where}: unknown key '{prefix}{method}.{key}' (not a field of trl.{trl_api.config_class_name(kind)}){hint}")
        found[method] = {k: v for k, v in sub.items() if k in fields}
    return found


def _build(cls: type, raw: Any, prefix: str, problems: list[str], where: str) -> Any:
    """Build dataclass `cls` from `raw`, appending problems instead of raising."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {_typename(raw)}")
        return cls()
    hints = typing.get_type_hints(cls)
    own = {f.name: f for f in dataclasses.fields(cls) if f.name != "trl" and not f.metadata.get("internal")}
    method = raw.get("method") if isinstance(raw.get("method"), str) else "dpo"  # a bad one is reported later
    passthrough = _passthrough_fields(cls, method)
    kwargs: dict[str, Any] = {}
    trl_kwargs: dict[str, Any] = {}
    if cls is PreferenceSection:  # the chosen method's own sub-section first; direct keys win
        raw = dict(raw)
        per_method = _method_sections(raw, prefix, problems, where)
        trl_kwargs.update(per_method.get(method, {}))
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key in own:
            kwargs[key] = _coerce(hints[key], value, dotted, problems, where)
        elif passthrough and key in passthrough[1]:
            trl_kwargs[key] = value
        else:
            known = list(own) + (sorted(passthrough[1]) if passthrough else [])
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            extra = f" (nor a field of {passthrough[0]})" if passthrough else ""
            problems.append(f"{where}: unknown key '{dotted}'{extra}{hint}")
    obj = cls(**kwargs)
    if passthrough:
        obj.trl = trl_kwargs
    if cls is PreferenceSection:
        obj._methods = per_method  # checked against their own TRL configs in _check
    return obj


def _coerce(tp: Any, value: Any, dotted: str, problems: list[str], where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, dotted, problems, where)
        for a in inner:  # e.g. DataSource | list[DataSource]: the shape of the value decides
            if (isinstance(value, dict) and dataclasses.is_dataclass(a)) or (isinstance(value, list) and typing.get_origin(a) is list):
                return _coerce(a, value, dotted, problems, where)
        for a in inner:  # e.g. list[str] | str: first that fits without problems
            trial: list[str] = []
            out = _coerce(a, value, dotted, trial, where)
            if not trial:
                return out
        problems.append(f"{where}: '{dotted}' must be {' or '.join(_typename_of(a) for a in inner)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, dotted + ".", problems, where)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: '{dotted}' must be a list, got {value!r}")
            return []
        return [_coerce(args[0], v, f"{dotted}[{i}]", problems, where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: '{dotted}' must be a mapping, got {value!r}")
            return {}
        return value
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        problems.append(f"{where}: '{dotted}' must be {_typename_of(tp)}, got {value!r}")
        return None
    return value


def _typename(v: Any) -> str:
    return type(v).__name__


def _typename_of(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


# ---------------------------------------------------------------------------------------------
# Checks on values (types are already checked)


def _check(cfg: PipelineConfig, problems: list[str], where: str) -> None:
    def bad(key: str, msg: str) -> None:
        problems.append(f"{where}: '{key}' {msg}")

    if not cfg.experiment:
        bad("experiment", "must be a non-empty name")
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
        if not cand.name:
            cand.name = Path(cand.path).name if cand.path else f"tiny-{cand.tiny.arch}-{cand.tiny.hidden_size}x{cand.tiny.num_layers}"
        if cand.name in names:
            bad(f"{key}.name", f"repeats '{cand.name}': give each candidate its own name")
        names.add(cand.name)
        if cand.path and _written_as_path(cand.path) and not Path(cand.path).expanduser().is_dir():
            bad(f"{key}.path", f"model directory {cand.path} does not exist (build it, or give a hub id)")
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
        if mp and _written_as_path(mp) and not Path(mp).expanduser().is_dir():
            bad(f"{section}.model_path", f"model directory {mp} does not exist (or give a hub id such as Qwen/Qwen2.5-0.5B)")
    if cfg.preference.method is not None and cfg.preference.method not in PREFERENCE_METHODS:  # None: mistyped, reported
        bad("preference.method", f"must be one of {', '.join(PREFERENCE_METHODS)}, got {cfg.preference.method!r}")
    if cfg.preference.method == "simpo" and cfg.preference.trl.get("loss_type", "simpo") != "simpo":
        bad("preference.loss_type", f"must be simpo for preference.method=simpo (TRL's CPOTrainer), got {cfg.preference.trl['loss_type']!r}")
    # The preference model may also be named by the method that trains it (e.g. the old `dpo`).
    cfg.evaluate.models = ["preference" if m == cfg.preference.method else m for m in cfg.evaluate.models]
    for m in cfg.evaluate.models:
        if m not in EVAL_MODELS:
            bad("evaluate.models", f"entries must be among {', '.join(EVAL_MODELS)} (or the method, {cfg.preference.method!r}), got {m!r}")
    if isinstance(cfg.distributed.num_processes, int) and cfg.distributed.num_processes < 1:
        bad("distributed.num_processes", f"must be >= 1, got {cfg.distributed.num_processes}")
    _check_distributed(cfg, bad)
    _check_orchestration(cfg, bad)
    from alignpipe import trl_api

    method = cfg.preference.method if cfg.preference.method in PREFERENCE_METHODS else "dpo"
    for section, kind, values in (("sft", "sft", cfg.sft.trl), ("reward", "reward", cfg.reward.trl),
                                  ("preference", trl_api.kind_of(method), cfg.preference.trl)):
        for key, msg in trl_api.check_config(kind, values):
            bad(f"{section}.{key}", msg)
    for other, values in getattr(cfg.preference, "_methods", {}).items():
        if other != method:  # the chosen method's sub-section is checked merged, above
            for key, msg in trl_api.check_config(trl_api.kind_of(other), values):
                bad(f"preference.{other}.{key}", msg)
    _check_report_to(cfg.tracking.report_to, bad)
    if "wandb" in cfg.tracking.report_to and not wandb_usable():
        bad("tracking.report_to", "includes wandb but no W&B credentials are set (WANDB_API_KEY or `wandb login`): "
            "run `export WANDB_MODE=offline` to log locally, or `wandb login`, or drop wandb from tracking.report_to")


def _check_data(cfg: PipelineConfig, bad) -> None:
    from alignpipe.data import FORMATS

    d = cfg.data
    for name, kind in (("sft", "sft"), ("preference", "preference"), ("eval", "eval"), ("eval_preference", "preference")):
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
            _check_source(src, key, kind, bad, FORMATS)
            if isinstance(src.weight, (int, float)) and src.weight <= 0:
                bad(f"{key}.weight", f"must be > 0, got {src.weight}")
            if isinstance(src.max_rows, int) and src.max_rows < 1:
                bad(f"{key}.max_rows", f"must be >= 1, got {src.max_rows}")
    if d.safety.path:
        _check_source(d.safety, "data.safety", "sft", bad, FORMATS)
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


def _check_source(src, key: str, kind: str, bad, formats) -> None:
    if src.path and _looks_like_file(src.path) and not Path(src.path).expanduser().exists():
        bad(f"{key}.path", f"file {src.path} does not exist")
    if src.format != "auto" and src.format not in formats[kind]:
        bad(f"{key}.format", f"must be auto or one of {', '.join(formats[kind])} for {kind} data, got {src.format!r}")


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
                bad("distributed.deepspeed", f"{name} sets '{key}' = {value!r} and '{section}.{both[0]}' sets it too: "
                    f"set in both places; make the DeepSpeed value \"auto\" (TrainingArguments owns it)")


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
            bad(f"orchestration.{f.name}.timeout_seconds", f"must be a positive number of seconds (or null for none), got {t}")
    if o.retrain_cron:
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=o.retrain_cron)
        except Exception:
            bad("orchestration.retrain_cron", f"is not a valid cron string: {o.retrain_cron!r} (e.g. \"0 3 * * 0\": Sundays 03:00)")
    p = cfg.promote
    if isinstance(p.tolerance, float) and p.tolerance < 0:
        bad("promote.tolerance", f"must be >= 0, got {p.tolerance}")
    if p.enabled and not p.metrics:
        bad("promote.metrics", "is empty: list the evaluation metrics the gate compares (or set promote.enabled=false)")


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


def _written_as_path(value: str) -> bool:
    """A model location meant as a local dir; anything else (org/name) is a hub id."""
    return value.startswith(("/", "./", "../", "~"))


def _looks_like_file(path: str) -> bool:
    return Path(path).is_absolute() or path.startswith((".", "~")) or Path(path).suffix != ""


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
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in names:
        if name == "mlflow":
            bad("tracking.report_to", "lists mlflow: every stage already logs to MLflow (tracking.uri); remove it "
                "(the trainer's own MLflow callback would open a second run)")
        elif name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(name, list(INTEGRATION_TO_CALLBACK), n=1)
            bad("tracking.report_to", f"unknown integration {name!r}" + (f"; did you mean {close[0]!r}?" if close else
                f"; known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}"))
        elif name not in get_available_reporting_integrations():
            bad("tracking.report_to", f"lists {name}, which is not installed (pip install it, or remove it)")
