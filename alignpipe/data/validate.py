"""`alignpipe validate`, and the check every command runs first: the recipe and every data file it
names, read and checked together before any compute. Done once per process."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from alignpipe.core.config import PipelineConfig
from alignpipe.core.errors import ConfigError
from alignpipe.core.recipe import load_config
from alignpipe.core.recipe_checks import check_tracking
from alignpipe.data import formats, mixture
from alignpipe.data.read import DataError

_validated: dict[tuple, tuple[tuple, PipelineConfig]] = {}
# Environment variables a recipe's resolved values depend on.
_ENV = ("ALIGNPIPE_HOME", "MLFLOW_TRACKING_URI", "ALIGNPIPE_CACHE")


def load_and_validate(path: str, overrides: list[str]) -> PipelineConfig:
    """The config and every data file it names, checked together; ConfigError lists all problems.

    Prints, per source, its detected format and rows read/kept/dropped by reason, then per
    training stage the rows left after dedup and decontamination, then the eval rows by check. A
    second call with the same recipe and overrides in this process returns the config checked the
    first time."""
    key = (str(path), tuple(overrides), tuple(os.environ.get(k) for k in _ENV))
    if key in _validated and _validated[key][0] == _files_state(_validated[key][1]):
        return _validated[key][1]
    cfg = load_config(path, overrides)
    problems = []
    # The tracking store as it is here and now (a server that answers, a readable sqlite file):
    # checked by every command, not by load_config, which a container's config must pass anywhere.
    check_tracking(cfg, lambda key, msg: problems.append(f"{cfg.source or 'config'}: '{key}' {msg}"))
    entries = [
        ("sft", cfg.data.sft),
        ("preference", cfg.data.preference),
        ("eval", cfg.data.eval),
        ("preference", cfg.data.eval_preference),
    ]
    if cfg.data.safety.path:
        entries.append(("sft", cfg.data.safety))
    if cfg.self_instruct.seed_tasks:
        entries.append(("sft", cfg.self_instruct.seed_tasks))
    for kind, entry in entries:
        for src in mixture.sources(entry) if not isinstance(entry, str) else [entry]:
            try:
                _, report = formats.load_source(kind, src, on_bad_rows="skip")
            except DataError as e:
                problems.append(str(e))
                continue
            print(report.line())
            if cfg.data.on_bad_rows == "fail":
                problems.extend(report.problems[:20])
    if problems:
        raise ConfigError(problems)
    try:
        evals = mixture.eval_sets(cfg)
        for kind in ("sft", "preference"):
            rows, report = mixture.stage_rows(cfg, kind, evals=evals)
            print(_stage_summary(kind, rows, report))
        checks = Counter(r["check"] for r in mixture.eval_rows(cfg))
        print(f"eval: {checks.total()} rows scored (" + ", ".join(f"{n} {c}" for c, n in sorted(checks.items())) + ")")
    except DataError as e:
        raise ConfigError([str(e)]) from None
    _validated[key] = (_files_state(cfg), cfg)
    return cfg


def _files_state(cfg: PipelineConfig) -> tuple:
    """(path, size, mtime) of the recipe and every data file it names: a change means check again."""
    paths = [cfg.source, cfg.self_instruct.seed_tasks, cfg.data.safety.path]
    for entry in (cfg.data.sft, cfg.data.preference, cfg.data.eval, cfg.data.eval_preference):
        paths += [s.path for s in mixture.sources(entry)]
    stats = []
    for p in filter(None, paths):
        try:
            st = Path(p).stat()
            stats.append((p, st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((p, None, None))
    return tuple(stats)


def _stage_summary(kind: str, rows: list, report: dict) -> str:
    dc = report.get("decontamination")
    parts = [f"{len(rows)} training rows"]
    if "safety_rows" in report:
        parts.append(f"{report['safety_rows']} refusal rows mixed in")
    if "duplicates_dropped" in report:
        parts.append(f"{report['duplicates_dropped']} duplicates dropped")
    if dc:
        parts.append(
            f"{dc['exact'] + dc['ngram_only']} contaminated ({dc['exact']} exact, {dc['ngram_only']} "
            f"{dc['ngram']}-gram) against {len(dc['eval_sets'])} eval set(s), {dc['removed']} removed"
        )
    return f"{kind}: " + "; ".join(parts)
