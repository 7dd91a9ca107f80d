"""`alignpipe`: validate a recipe, run one stage, or run the whole pipeline.

Every expected failure (config, data, model source) ends with exit code 1 and one line per
problem naming the file, row and field; no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

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
    st.add_argument("name", choices=STAGES, help="a preference method's name (dpo, ppo, ...) runs that method; "
                    "`preference` runs the config's preference.method")
    with_config(st)
    st.add_argument("--result-json", help=argparse.SUPPRESS)  # internal: where rank 0 of a launched job writes the result
    with_config(sub.add_parser("run", help="run select -> sft -> [reward] -> preference (dpo, ppo, ...) -> evaluate",
                               description="Run all stages in order and print the comparison table."))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from alignpipe import launch
    from alignpipe.config import ConfigError
    from alignpipe.data import DataError
    from alignpipe.models import ModelSourceError
    from alignpipe.training import IntegrityError

    if launch.in_rank():
        _prefix_output(f"[rank {launch.rank()}] ")

    try:
        cfg = _load_and_validate(args.config, args.overrides)
        if args.command == "validate":
            print(f"{args.config}: OK")
            return 0
        started = time.time()
        if args.command == "stage":
            from flows.pipeline import run_stage

            result = run_stage(cfg, args.name)
            if args.result_json:
                from alignpipe.tracking import write_result

                write_result(Path(args.result_json), result)  # rank 0 only
            if launch.rank() != 0:
                return 0
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
    except (DataError, ModelSourceError, launch.LaunchError, IntegrityError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1


def _prefix_output(prefix: str) -> None:
    """In a launched rank, start every line this process prints with its rank."""

    class Prefixed:
        def __init__(self, stream):
            self.stream, self.fresh = stream, True

        def write(self, text):
            out = []
            for piece in text.splitlines(keepends=True):
                out.append((prefix if self.fresh else "") + piece)
                self.fresh = piece.endswith(("\n", "\r"))
            return self.stream.write("".join(out))

        def __getattr__(self, name):
            return getattr(self.stream, name)

    sys.stdout, sys.stderr = Prefixed(sys.stdout), Prefixed(sys.stderr)


def _load_and_validate(path: str, overrides: list[str]):
    """The config and every data file it names, checked together; ConfigError lists all problems."""
    from alignpipe import data
    from alignpipe.config import ConfigError, load_config

    cfg = load_config(path, overrides)
    problems = []
    for kind, src in (("sft", cfg.data.sft), ("preference", cfg.data.preference), ("eval", cfg.data.eval), ("preference", cfg.data.eval_preference)):
        if src.path:
            rows, found = data.problems(kind, src.path)
            problems.extend(found)
            if not found:
                print(f"{src.path}: {rows} rows ({kind})")
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
    method = results["preference"]["stage"]
    if results.get("reward"):
        print(f"reward model: held-out pair accuracy {results['reward']['metrics'].get('eval_accuracy', float('nan')):.3f}")
    for better, worse in (("sft", "base"), (method, "sft")):
        if better in metrics and worse in metrics:
            up, down = wins(metrics[better], metrics[worse])
            print(f"{better} vs {worse}: better on {len(up)} ({', '.join(up) or '-'}), worse on {len(down)} ({', '.join(down) or '-'})")


if __name__ == "__main__":
    sys.exit(main())
