"""`alignpipe`: validate a recipe, run one stage, or run the whole pipeline.

Every expected failure (config, data, model source) ends with exit code 1 and one line per
problem naming the file, row and field; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from flows.pipeline import STAGES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alignpipe", description="Base model -> SFT -> DPO -> evaluation, on TRL and MLflow.")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("config", help="YAML recipe, e.g. configs/tiny.yaml")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set sft.max_steps=5 (repeatable)")
        return sp

    with_config(sub.add_parser("validate", help="check the config and every data file; train nothing",
                               description="Check the config and every data file without training. Exit 0 if all is well, "
                                           "else 1 with one line per problem."))
    st = sub.add_parser("stage", help="run one stage", description="Run one stage. Upstream results come from the config "
                        "(sft.model_path, preference.model_path) or from earlier runs of this experiment; missing ones are run first.")
    st.add_argument("name", choices=STAGES)
    with_config(st)
    with_config(sub.add_parser("run", help="run select -> sft -> dpo -> evaluate",
                               description="Run all stages in order and print the comparison table."))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from alignpipe.config import ConfigError
    from alignpipe.data import DataError
    from alignpipe.models import ModelSourceError

    try:
        cfg = _load_and_validate(args.config, args.overrides)
        if args.command == "validate":
            print(f"{args.config}: OK")
            return 0
        started = time.time()
        if args.command == "stage":
            from flows.pipeline import run_stage

            result = run_stage(cfg, args.name)
            _report_stage(result)
        else:
            from flows.pipeline import run_pipeline

            result = run_pipeline(cfg)
            _report_pipeline(result)
        print(f"done in {time.time() - started:.0f}s; MLflow: {cfg.tracking_uri} (experiment '{cfg.experiment}')")
        return 0
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
    except (DataError, ModelSourceError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1


def _load_and_validate(path: str, overrides: list[str]):
    """The config and every data file it names, checked together; ConfigError lists all problems."""
    from alignpipe import data
    from alignpipe.config import ConfigError, load_config

    cfg = load_config(path, overrides)
    problems = []
    for kind, src in (("sft", cfg.data.sft), ("preference", cfg.data.preference), ("eval", cfg.data.eval), ("preference", cfg.data.eval_preference)):
        if src.path:
            found = data.problems(kind, src.path)
            problems.extend(found)
            if not found:
                print(f"{src.path}: {len(data.read_records(src.path))} rows ({kind})")
    if problems:
        raise ConfigError(problems)
    return cfg


def _report_stage(result: dict) -> None:
    from stages.evaluate import format_table

    print(f"{result['stage']}: MLflow run {result['run_id']}")
    if result["stage"] == "select":
        print(f"selected {result['reason']}")
    elif result["stage"] == "evaluate":
        print(format_table(result["metrics"]))
    else:
        print(f"model: {result['model_path']}")
        print("  ".join(f"{k}={v:.4g}" for k, v in sorted(result["metrics"].items())))


def _report_pipeline(results: dict) -> None:
    from stages.evaluate import format_table, wins

    if results.get("select"):
        print(f"select: {results['select']['reason']}")
    metrics = results["evaluate"]["metrics"]
    print("\nEvaluation on the frozen suite (held-out prompts and pairs):")
    print(format_table(metrics))
    for better, worse in (("sft", "base"), ("dpo", "sft")):
        if better in metrics and worse in metrics:
            up, down = wins(metrics[better], metrics[worse])
            print(f"{better} vs {worse}: better on {len(up)} ({', '.join(up) or '-'}), worse on {len(down)} ({', '.join(down) or '-'})")


if __name__ == "__main__":
    sys.exit(main())
