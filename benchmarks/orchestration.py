"""What the Prefect flow costs: the same stages called bare vs through the flow `pipeline`, and a
cached re-run of the unchanged flow vs its first run, all in one process.

    .venv/bin/python benchmarks/orchestration.py [--config configs/tiny.yaml] [--set k=v ...]

Each variant gets a fresh state dir (tiny models come from the shared cache, built beforehand so
no variant pays for them). The temporary Prefect server is started before the timings and its
start-up is reported on its own: with `alignpipe up` it is already running.
Goals (issue 3): flow <= 1.10x bare stages; cached re-run <= 5 % of the first run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare(cfg) -> None:
    """select -> sft -> dpo -> evaluate, each stage through the runner (no Prefect)."""
    from alignpipe.flows.runner import run_stage

    base = run_stage(cfg, "select", {}).model_path
    sft = run_stage(cfg, "sft", {"base": base})
    dpo = run_stage(cfg, "preference", {"sft": sft.model_path, "template": sft.template})
    models = {"base": base, "sft": sft.model_path, "dpo": dpo.model_path}
    run_stage(cfg, "evaluate", {"models": models, "template": sft.template})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="alignpipe-bench-"))
    os.environ.setdefault("ALIGNPIPE_CACHE", str(ROOT / ".alignpipe" / "cache"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)

    from alignpipe.core.recipe import load_config
    from alignpipe.training import models

    for cand in load_config(args.config, args.overrides).model.candidates:  # build outside the timings
        models.resolve(cand, load_config(args.config, args.overrides))

    t = time.perf_counter()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:  # starts the temporary server (once per process)
        client.api_healthcheck()
    startup = time.perf_counter() - t

    from alignpipe.flows.pipeline import pipeline

    timings = {}
    t = time.perf_counter()
    bare(load_config(args.config, args.overrides + [f"state_dir={work / 'bare'}"]))
    timings["bare stages"] = time.perf_counter() - t
    flow_overrides = args.overrides + [f"state_dir={work / 'flow'}"]
    for name in ("flow, first run", "flow, cached re-run"):
        t = time.perf_counter()
        pipeline(config=args.config, overrides=flow_overrides)
        timings[name] = time.perf_counter() - t

    print(f"\nconfig {args.config} {' '.join(args.overrides)}; {os.cpu_count()} CPUs; state under {work}")
    print(f"{'prefect temporary server start-up':36} {startup:8.1f} s  (not in the figures below)")
    for name, secs in timings.items():
        print(f"{name:36} {secs:8.1f} s")
    first = timings["flow, first run"]
    print(f"{'flow / bare stages':36} {first / timings['bare stages']:8.3f} x  (goal <= 1.10)")
    print(f"{'cached re-run / first run':36} {timings['flow, cached re-run'] / first:8.1%}    (goal <= 5 %)")


if __name__ == "__main__":
    main()
