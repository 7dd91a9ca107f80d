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

from alignpipe.core.files import state_home
from alignpipe.core.registry import PREFERENCE_METHODS, STAGES

STAGE_NAMES = (*STAGES, *PREFERENCE_METHODS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alignpipe",
        description=f"select -> sft -> preference method ({', '.join(PREFERENCE_METHODS)}) -> evaluate -> gate -> "
        "compare, with optional self_instruct and distillation; on TRL, Prefect and MLflow.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("config", help="YAML recipe, e.g. configs/tiny.yaml")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set sft.max_steps=5 (repeatable)",
        )
        return sp

    with_config(
        sub.add_parser(
            "validate",
            help="check the config and every data file; train nothing",
            description="Check the config and every data file without training. Exit 0 if all is well, "
            "else 1 with one line per problem.",
        )
    )
    st = sub.add_parser(
        "stage",
        help="run one stage",
        description="Run one stage. Upstream results come from the config "
        "(sft.model_path, preference.model_path) or from earlier runs of this experiment; missing ones are run first.",
    )
    st.add_argument(
        "name",
        choices=STAGE_NAMES,
        help="a preference method's name (dpo, ppo, ...) runs that method; "
        "`preference` runs the config's preference.method",
    )
    with_config(st)
    st.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an upstream input, e.g. --input base=PATH (sft), --input sft=PATH (reward, dpo, ...); "
        "default: from the config, else from this experiment's earlier results",
    )
    st.add_argument(
        "--result-json", help=argparse.SUPPRESS
    )  # internal: where rank 0 of a launched job writes the result
    run = with_config(
        sub.add_parser(
            "run",
            help="run the Prefect flow `pipeline`: select -> sft -> [reward] -> dpo|ppo|... -> evaluate -> gate",
            description="Run the whole pipeline as the Prefect flow `pipeline` (a local temporary Prefect "
            "server unless PREFECT_API_URL is set), then print the comparison table. "
            "Stages whose inputs are unchanged are reused, not re-run.",
        )
    )
    run.add_argument("--sft-only", action="store_true", help="select -> sft -> evaluate (no preference stage)")
    run.add_argument(
        "--fast-dev-run",
        action="store_true",
        help="every stage for 2 steps on a handful of items, in experiment <experiment>-fast-dev-run, "
        "registering nothing: a recipe's smoke test (same as --set fast_dev_run=true)",
    )
    run.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="train sft and the preference stage with N seeds (seed, seed+1, ...) "
        "and report means with intervals over items and seeds; same as --set seeds=[...]",
    )
    cmp = sub.add_parser(
        "compare",
        help="base / SFT-only / DPO table from MLflow, plot logged",
        description="One table of the newest evaluation of each model (base, SFT-only, DPO, ...) on the same "
        "suite, read from MLflow; the table and a PNG plot are logged to a `compare` run.",
    )
    cmp.add_argument("config", nargs="?", help="recipe whose experiment and tracking URI to use")
    cmp.add_argument("--experiment", help="MLflow experiment (default: the recipe's, else 'tiny')")
    for name, text in (
        ("up", "start Prefect + MLflow servers, deploy prefect.yaml on a process work pool, start its worker"),
        ("down", "stop what `up` started"),
        ("status", "tell what is running"),
        ("worker", "on another machine: a worker of the pool, in the foreground, against the servers of `up`"),
    ):
        sp = sub.add_parser(name, help=text, description=text)
        sp.add_argument("--home", help="state dir (default: $ALIGNPIPE_HOME or ./.alignpipe); shared by all machines")
        if name == "up":
            sp.add_argument("--prefect-port", type=int, default=4200)
            sp.add_argument("--mlflow-port", type=int, default=5000)
            sp.add_argument(
                "--database",
                help="PostgreSQL server (postgresql://USER[:PASSWORD]@HOST[:PORT]) for Prefect's and MLflow's "
                "databases, for workers on several machines (default: sqlite files in the state dir)",
            )
        if name in ("up", "worker"):
            sp.add_argument("--runs", type=int, default=2, help="flow runs the worker runs at once (default 2)")
        if name == "worker":
            sp.add_argument("--prefect", default=os.environ.get("PREFECT_API_URL"), help="Prefect API URL, .../api")
            sp.add_argument("--mlflow", default=os.environ.get("MLFLOW_TRACKING_URI"), help="MLflow server URL")
            sp.add_argument("--name", help="the worker's name in Prefect (default: Prefect's)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.command == "stage":
        from alignpipe.core.processes import die_with_launcher

        die_with_launcher()  # a rank, before its heavy imports: no-op in a process nobody launched
    if args.command in ("up", "down", "status", "worker"):
        return _servers(args)
    # The rest of the package is imported here, not at the top: `up`, `down` and `status` need
    # none of it (torch, transformers, prefect and mlflow take seconds to import).
    from alignpipe.core import processes
    from alignpipe.core.errors import ConfigError
    from alignpipe.data.read import DataError
    from alignpipe.data.validate import load_and_validate
    from alignpipe.training import launch
    from alignpipe.training.integrity import IntegrityError
    from alignpipe.training.models import ModelSourceError

    if launch.in_rank():
        _prefix_output(f"[rank {launch.rank()}] ")
    processes.stop_on_sigterm()  # like Ctrl-C: a launched job's process group is killed
    _prefect_defaults()
    try:
        if args.command == "compare":
            return _compare(args)
        if getattr(args, "seeds", None):
            args.overrides.append(_seeds_override(args.config, args.overrides, args.seeds))
        if getattr(args, "fast_dev_run", False):
            args.overrides.append("fast_dev_run=true")
        cfg = load_and_validate(args.config, args.overrides)
        if args.command == "validate":
            print(f"{args.config}: OK")
            return 0
        launch.check_ranks(cfg)  # what this machine can run, before any compute
        started = time.time()
        if args.command == "stage":
            result = _stage(cfg, args.name, args.inputs)
            if result is None:  # node 1.. of a multi-node job: rank 0, on node 0, has the result
                print(f"{args.name}: node {cfg.distributed.node_rank}'s ranks finished; node 0 reports the result")
                return 0
            if args.result_json and launch.rank() == 0:
                from alignpipe.core.files import write_json

                write_json(Path(args.result_json), result.to_dict())
            if launch.rank() != 0:
                return 0
            _report_stage(result)
        else:
            from alignpipe.flows.pipeline import run_here

            result = run_here(args.config, args.overrides, preference=not args.sft_only)
            _report_pipeline(result)
        print(f"done in {time.time() - started:.0f}s; MLflow: {cfg.tracking_uri} (experiment '{cfg.experiment}')")
        return 0
    except ConfigError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
    except (DataError, ModelSourceError, launch.LaunchError, IntegrityError) as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(
            "error: interrupted; finished stages are kept, and the interrupted one resumes from its last "
            "checkpoint when the same command runs again",
            file=sys.stderr,
        )
        return 130
    except PermissionError as e:
        print(
            f"error: {e.filename or e}: permission denied; the state dir and data must be writable/readable "
            "(set ALIGNPIPE_HOME or state_dir to a folder you own)",
            file=sys.stderr,
        )
    except Exception as e:
        if args.command != "run":
            raise
        # the flow already logged the traceback; finished stages stay cached, a half-trained one resumes
        print(
            f"error: the pipeline failed: {type(e).__name__}: {e}\n"
            f"error: finished stages are kept and reused; run the same command again to resume",
            file=sys.stderr,
        )
    return 1


def _stage(cfg, name: str, given: list[str]):
    """One stage through the one runner, its inputs from --input, the config or earlier results."""
    from alignpipe.core.errors import ConfigError
    from alignpipe.flows.runner import for_method, resolve_inputs, run_stage

    inputs = {}
    for item in given:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError([f"--input {item!r}: expected key=value, e.g. --input base=/path/to/model"])
        inputs[key.strip()] = value
    cfg = for_method(cfg, name)
    return run_stage(cfg, name, resolve_inputs(cfg, name, inputs))


def _seeds_override(config: str, overrides: list[str], n: int) -> str:
    """`--seeds N` as `seeds=[seed, seed+1, ...]`, from the recipe's `seed`."""
    from alignpipe.core.errors import ConfigError
    from alignpipe.core.recipe import load_config

    if n < 1:
        raise ConfigError([f"--seeds: must be >= 1, got {n}"])
    base = load_config(config, overrides).seed
    return f"seeds=[{', '.join(str(base + i) for i in range(n))}]"


def _prefect_defaults() -> None:
    """Prefect state under the project's state dir, and a patient temporary server."""
    home = state_home()
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _servers(args) -> int:
    from alignpipe import servers

    home = state_home(args.home)
    if args.command == "worker":
        if not (args.prefect and args.mlflow):
            print(
                "error: worker: pass --prefect URL/api and --mlflow URL (or set PREFECT_API_URL, MLFLOW_TRACKING_URI)"
            )
            return 2
        try:
            servers.check_reachable(args.prefect, args.mlflow)
        except servers.ServerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        cmd = servers.worker_command(args.runs, args.name)
        servers.default_signals()  # exec keeps an ignored SIGINT (`alignpipe worker ... &` in a script)
        os.execve(cmd[0], cmd, servers.worker_env(home, args.prefect, args.mlflow))
    if args.command == "up":
        try:
            u = servers.up(home, args.prefect_port, args.mlflow_port, args.runs, database=args.database)
        except servers.ServerError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"Prefect UI: {u['prefect']}\nMLflow UI:  {u['mlflow']}\nstate:      {home}")
        print(
            f"deployments pipeline/full and pipeline/sft-only are on work pool '{servers.POOL}' "
            f"(a worker runs {args.runs} at once). In this shell run:\n"
            f"  export PREFECT_API_URL={u['PREFECT_API_URL']} MLFLOW_TRACKING_URI={u['mlflow']}\n"
            f"  prefect deployment run pipeline/full --watch"
        )
        return 0
    if args.command == "down":
        stopped = servers.down(home)
        print("stopped " + ", ".join(stopped) if stopped else f"nothing running under {home}")
        return 0
    running = servers.status(home)
    for name, s in running.items():
        state = f"running (pid {s['pid']})" if s["alive"] else "stopped"
        print(f"{name:8} {state}" + (f"  {s['url']}" if s["alive"] and s["url"] else "") + f"  log: {s['log']}")
    return 0 if all(s["alive"] for s in running.values()) else 3


def _compare(args) -> int:
    from alignpipe.core.config import PipelineConfig
    from alignpipe.core.recipe import load_config
    from alignpipe.evaluation import compare

    cfg = load_config(args.config) if args.config else PipelineConfig(experiment="tiny")
    experiment = args.experiment or cfg.experiment
    print(compare.report(experiment, cfg.tracking_uri))
    return 0


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


def _report_stage(result) -> None:
    from alignpipe.evaluation.compare import format_table

    print(f"{result.stage}: MLflow run {result.run_id}")
    if result.stage == "select":
        print(f"selected {result.details['reason']}")
    elif result.stage == "evaluate":
        print(format_table(result.metrics, result.details.get("intervals"), result.details.get("comparisons")))
    elif result.stage == "self_instruct":
        print(f"data: {result.data_path}")
        print("  ".join(f"{k}={v}" for k, v in result.metrics.items()))
    else:
        print(f"model: {result.model_path}")
        print("  ".join(f"{k}={v:.4g}" for k, v in sorted(result.metrics.items())))


def _report_pipeline(results: dict) -> None:
    from alignpipe.evaluation import promote, stats
    from alignpipe.evaluation.compare import format_table, verdict_lines

    if results.get("select"):
        print(f"select: {results['select'].details['reason']}")
    evaluation = results["evaluate"]
    intervals, comparisons = evaluation.details.get("intervals"), evaluation.details.get("comparisons", {})
    seeds = evaluation.details.get("seeds") or []
    print(f"\nEvaluation on the frozen suite (held-out prompts and pairs), this run, {len(seeds)} seed(s) {seeds}:")
    print(
        "(value [95% interval]; differences are paired, marked better/worse when the interval excludes 0: "
        f"{stats.METHOD})"
    )
    print(format_table(evaluation.metrics, intervals, comparisons))
    final = results["final"].stage
    if results.get("reward"):
        print(
            f"reward model: held-out pair accuracy {results['reward'].metrics.get('eval_accuracy', float('nan')):.3f}"
        )
    pairs = [("sft", "base"), (final, "sft"), ("student_distill", "student_sft"), ("student_distill", "teacher")]
    if results.get("distill"):
        d = results["distill"]
        print(
            f"distill ({d.details.get('mode')}): student {d.details.get('student_parameters'):,} parameters, "
            f"teacher {d.details.get('teacher_parameters'):,} (ratio {d.details.get('parameter_ratio')})"
        )
    for line in verdict_lines(comparisons, pairs):
        print(line)
    gate = results["gate"]
    if gate.get("passed") is not None:
        reg = gate.get("registered") or {}
        print(
            f"gate: {promote.verdict_line(gate)}"
            + (
                f"; registered {reg['name']} v{reg['version']}"
                + (f", alias {reg['alias']}" if reg.get("alias") else "")
                if reg
                else ""
            )
        )
    print("\nComparison from MLflow (alignpipe compare):")
    print(results["comparison"])


if __name__ == "__main__":
    sys.exit(main())
