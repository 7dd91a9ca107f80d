"""Loading a recipe: defaults (alignpipe.core.config) <- YAML file <- `--set key=value` overrides.

Every problem (unknown key, wrong type, bad value, missing file) is collected and reported at
once, before any compute, each naming its file and key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from alignpipe.core import gguf_api, trl_api
from alignpipe.core.config import (
    PREFERENCE_METHODS,
    PipelineConfig,
    PreferenceSection,
    RewardSection,
    SFTSection,
)
from alignpipe.core.errors import ConfigError
from alignpipe.core.files import DATA_SUFFIXES, written_as_path
from alignpipe.core.recipe_checks import check
from alignpipe.core.registry import METHODS

# Keys whose relative values are file paths, resolved against the YAML file's folder.
_PATH_KEYS = {"path", "deepspeed", "model_path", "hostfile", "seed_tasks", "generator", "teacher", "student", "from"}

# Keys that left the recipe, and where they went.
MOVED = {"orchestration.retrain_cron": ": the retrain schedule is in prefect.yaml now (`schedules` of `full`)"}


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `3e-4` as a string; accept the exponent forms people write for rates. A key
    given twice in one mapping is an error (YAML would keep the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' is given twice (lines {seen[key]} and {line}); keep one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?[0-9][0-9_]*\.[0-9_]*$|^[-+]?\.[0-9_]+$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


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
            raise ConfigError(
                [f"{path}: config file not found (give the path of a YAML recipe, e.g. configs/tiny.yaml)"]
            )
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
    _fill_defaults(cfg)
    if cfg.fast_dev_run is True:
        _shrink_for_fast_dev_run(cfg)
    check(cfg, problems, where)
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
    """A relative path that exists next to the YAML file, or is written or named as a file (not a
    file inside an installed package, `pkg:...`)."""
    if value.startswith(gguf_api.PKG):
        return False
    return written_as_path(value) or (base / value).exists() or value.endswith((*DATA_SUFFIXES, ".yaml", ".gguf"))


def _fill_defaults(cfg: PipelineConfig) -> None:
    """Values derived from others: a candidate's default name; the preference model named by its
    method in evaluate.models (e.g. `dpo`) as `preference`."""
    for cand in cfg.model.candidates:
        if cand is not None and not cand.name and (cand.path is None) != (cand.tiny is None):
            cand.name = (
                Path(cand.path).name
                if cand.path
                else f"tiny-{cand.tiny.arch}-{cand.tiny.hidden_size}x{cand.tiny.num_layers}"
            )
    cfg.evaluate.models = ["preference" if m == cfg.preference.method else m for m in cfg.evaluate.models]


# fast_dev_run: the steps of every training stage, and the items of every data set and scoring step.
FAST_DEV_STEPS, FAST_DEV_ROWS, FAST_DEV_EVAL_ROWS = 2, 16, 6


def _shrink_for_fast_dev_run(cfg: PipelineConfig) -> None:
    """Every stage of the recipe, as Lightning's fast_dev_run: 2 optimizer steps, a handful of rows,
    short generations, one seed, nothing registered; in its own experiment, so nothing of a real run
    is reused or replaced."""
    cfg.experiment = f"{cfg.experiment}-fast-dev-run"
    cfg.seeds = cfg.seeds[:1] if cfg.seeds else None
    cfg.promote.enabled = False
    for values in (cfg.sft.trl, cfg.reward.trl, cfg.preference.trl, cfg.distill.sequence, cfg.distill.logits):
        values.update(
            max_steps=FAST_DEV_STEPS, logging_steps=1, save_steps=FAST_DEV_STEPS, gradient_accumulation_steps=1
        )
        if "num_generations" not in values:  # online methods need a batch that their generations divide
            values["per_device_train_batch_size"] = min(values.get("per_device_train_batch_size", 4), 4)
    for cand in cfg.model.candidates:
        if cand is not None and cand.tiny is not None:
            cand.tiny.pretrain_steps = min(cand.tiny.pretrain_steps, FAST_DEV_STEPS)
    data = cfg.data
    for kind, rows in (("sft", FAST_DEV_ROWS), ("preference", FAST_DEV_ROWS), ("eval", FAST_DEV_EVAL_ROWS)):
        for key in (kind, f"{kind}_preference") if kind == "eval" else (kind,):
            sources = getattr(data, key)
            for src in sources if isinstance(sources, list) else [sources]:
                src.max_rows = min(src.max_rows or rows, rows)
    data.validation_rows = min(data.validation_rows, 4)
    cfg.select.perplexity_rows, cfg.select.generation_rows = 4, 2
    cfg.select.max_new_tokens = cfg.evaluate.max_new_tokens = cfg.distill.max_new_tokens = 8
    cfg.evaluate.num_samples = 2
    cfg.formats.robustness_rows = min(cfg.formats.robustness_rows, 2)
    si = cfg.self_instruct
    si.rounds, si.prompts_per_round, si.max_new_tokens = 1, 2, 16


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
    if cls is SFTSection:
        return "trl.SFTConfig", trl_api.config_fields("sft")
    if cls is RewardSection:
        return "trl.RewardConfig", trl_api.config_fields("reward")
    if cls is PreferenceSection:
        kind = METHODS[method if method in PREFERENCE_METHODS else "dpo"].trl_kind
        return f"trl.{trl_api.config_class_name(kind)}", trl_api.config_fields(kind)
    return None


def _method_sections(raw: dict[str, Any], prefix: str, problems: list[str], where: str) -> dict[str, dict[str, Any]]:
    """Pop the per-method sub-sections (`preference.ppo: {...}`) out of `raw`, keys checked."""
    found = {}
    for method in PREFERENCE_METHODS:
        if method not in raw:
            continue
        sub = raw.pop(method)
        if sub is None:
            continue
        kind = METHODS[method].trl_kind
        if not isinstance(sub, dict):
            problems.append(
                f"{where}: '{prefix}{method}' must be a mapping of trl.{trl_api.config_class_name(kind)} fields, "
                f"got {sub!r}"
            )
            continue
        fields = trl_api.config_fields(kind)
        for key in sub:
            if key not in fields:
                close = difflib.get_close_matches(str(key), sorted(fields), n=1)
                hint = f"; did you mean '{prefix}{method}.{close[0]}'?" if close else ""
                problems.append(
                    f"{where}: unknown key '{prefix}{method}.{key}' "
                    f"(not a field of trl.{trl_api.config_class_name(kind)}){hint}"
                )
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
    own = {  # by YAML key: a field's own name, or `key` in its metadata (`from`, a Python keyword)
        f.metadata.get("key", f.name): f
        for f in dataclasses.fields(cls)
        if f.name != "trl" and not f.metadata.get("internal")
    }
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
            f = own[key]
            kwargs[f.name] = _over_default(f, _coerce(hints[f.name], value, dotted, problems, where), value)
        elif passthrough and key in passthrough[1]:
            trl_kwargs[key] = value
        else:
            known = list(own) + (sorted(passthrough[1]) if passthrough else [])
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            hint = MOVED.get(dotted, hint)
            extra = f" (nor a field of {passthrough[0]})" if passthrough else ""
            problems.append(f"{where}: unknown key '{dotted}'{extra}{hint}")
    obj = cls(**kwargs)
    if passthrough:
        obj.trl = trl_kwargs
    if cls is PreferenceSection:
        obj._methods = per_method  # checked against their own TRL configs in _check
    return obj


def _over_default(f: dataclasses.Field, built: Any, raw: Any) -> Any:
    """A section given in part, over a field default that is not its class's (a stage's policy in the
    registry): the keys given replace the default's, the others keep it."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
    if not (dataclasses.is_dataclass(default) and dataclasses.is_dataclass(built) and isinstance(raw, dict)):
        return built
    if default == type(default)():
        return built
    return dataclasses.replace(default, **{k: getattr(built, k) for k in raw if hasattr(built, k)})


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
            if (isinstance(value, dict) and dataclasses.is_dataclass(a)) or (
                isinstance(value, list) and typing.get_origin(a) is list
            ):
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
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )
