#!/usr/bin/env python
"""ZeRO's memory promise, measured: peak memory per rank and tokens/s of the SFT stage on one model,
1 process vs 2 ranks under ZeRO-2, ZeRO-3 and their CPU-offload variants, side by side in one run.

    python benchmarks/zero_memory.py [--hidden 1024] [--layers 16] [--steps 3] [--variants single,zero2,zero3,...]

The model is built locally (random init, one pretraining step: no hub) large enough that its
training state dominates: with Adam in fp32, weights + gradients + two moments are 16 bytes a
parameter (1024 x 16 layers: ~220M parameters, ~3.3 GiB of state). Each variant is a real
`alignpipe stage sft configs/tiny.yaml --input base=MODEL` run (DeepSpeed launched for the 2-rank
ones, the repo's deepspeed_configs/), in its own state dir, for the same optimizer steps and
per-rank batch. While it runs, the resident memory (RSS) of every process of the job is sampled
from /proc every 0.2 s. A rank's peak is the largest it reached: in training (up to the log of the
next-to-last optimizer step: model load, DeepSpeed setup and a whole step with Adam's state) and
over the whole stage (with the Trainer's final checkpoint, for which ZeRO-3's rank 0 gathers the
whole model, the save and the integrity check). The 2-rank jobs get the launcher's environment
(alignpipe.training.launch), which sets MALLOC_MMAP_THRESHOLD_: glibc otherwise kept the buffers
ZeRO-3 frees at every step in each rank's heap; and their ZeRO-3 optimizer keeps no second fp32
copy of fp32 weights (alignpipe.core.deepspeed_api.alias_fp32_master_weights). RSS includes each
process's Python, torch and DeepSpeed runtime (about 0.5 GiB), which ZeRO cannot split; the column
`state/rank` gives what the parameters' training state alone would take. Each variant's largest
rank is also broken down (anon: private heap; file: mapped files; pss: shared pages split between
the sharers). tokens/s: TRL's num_tokens over train_runtime, from the stage's printed metrics. On a
CPU box the ranks share the cores, so throughput here says little about GPUs; the memory split is
the point.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from peak_memory import REPO, local_model, run_sampled

ALIGNPIPE = REPO / ".venv" / "bin" / "alignpipe"
VARIANTS = {  # name: (ranks, deepspeed config or None)
    "single": (1, None),
    "zero2": (2, "zero2.json"),
    "zero3": (2, "zero3.json"),
    "zero2_offload": (2, "zero2_offload.json"),
    "zero3_offload": (2, "zero3_offload.json"),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(name: str, model: Path, steps: int, batch: int, length: int) -> dict:
    ranks, zero = VARIANTS[name] if name in VARIANTS else (2, name)
    sets = [
        f"sft.max_steps={steps}",
        f"sft.per_device_train_batch_size={batch}",
        f"sft.max_length={length}",
        "sft.save_steps=100000",
        "sft.logging_steps=1",
        "sft.warmup_steps=0",
        "data.validation_rows=8",
        "tracking.log_model_weights=false",
    ]
    if zero:
        sets += [
            f"distributed.num_processes={ranks}",
            f"distributed.deepspeed={zero if '/' in zero else 'deepspeed_configs/' + zero}",
            f"distributed.master_port={_free_port()}",
        ]
    state = Path(tempfile.mkdtemp(prefix=f"zero-{Path(name).stem}-"))
    cmd = [str(ALIGNPIPE), "stage", "sft", "configs/tiny.yaml", "--input", f"base={model}"]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "ALIGNPIPE_HOME": str(state), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    # "training": up to the log of the next-to-last optimizer step (logging_steps=1). The Trainer's final
    # checkpoint (ZeRO-3's rank 0 gathers the whole model for it) starts as soon as the last step is
    # logged, sooner than that log line reaches this process through the launcher.
    got = run_sampled(cmd, REPO, env, until=r"\{'loss': ", times=max(1, steps - 1))
    shutil.rmtree(state, ignore_errors=True)  # a checkpoint with optimizer state: GBs a variant
    out = got["out"]
    if got["rc"] != 0:
        raise SystemExit(f"{name}: the stage failed (rc {got['rc']}):\n{out[-4000:]}")

    def ranks_of(table: dict) -> list[tuple[int, int]]:
        """(peak RSS, pid) of the trainers, largest last: the CLI itself (single) or the launched ranks
        (python -u -m alignpipe.cli ...)."""
        mark = "alignpipe.cli" if zero else "alignpipe"
        found = [
            (rss, pid) for pid, (rss, c) in table.items() if mark in c and "deepspeed" not in c.split("alignpipe")[0]
        ]
        return sorted(found)[-ranks:]

    runtime = [float(x) for x in re.findall(r"'train_runtime': '([\d.]+)'", out)]
    tokens = [float(x) for x in re.findall(r"'num_tokens': '([\d.e+]+)'", out)]
    training, top = ranks_of(got["phase_peaks"])[-1]
    print(
        f"{name}: training peaks of its largest rank: "
        + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in got["phase_detail"][top].items()),
        flush=True,
    )
    return {
        "name": name,
        "ranks": ranks,
        "training": training,
        "overall": ranks_of(got["peaks"])[-1][0],
        "tokens_per_s": tokens[-1] / runtime[-1] if runtime and tokens else None,
        "wall_s": got["wall"],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (default 3, at least 2)")
    p.add_argument("--batch", type=int, default=1, help="per-rank batch (default 1)")
    p.add_argument("--length", type=int, default=128, help="sft.max_length (default 128)")
    p.add_argument("--variants", default="single,zero2,zero3,zero3_offload")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be at least 2 (training is measured up to the next-to-last step)")
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS and not n.endswith(".json")]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")

    model, n_params = local_model(a.hidden, a.layers)
    state_gb = n_params * 16 / 2**30
    print(f"model {model.name}: {n_params / 1e6:.0f}M parameters, {state_gb:.2f} GiB of fp32 Adam training state")
    rows = [run_variant(n, model, a.steps, a.batch, a.length) for n in names]
    base = next((r for r in rows if r["name"] == "single"), rows[0])
    print(
        f"\n{'variant':<14} {'ranks':>5} {'training peak/rank':>18} {'vs single':>9} {'whole-stage peak/rank':>21} "
        f"{'state/rank':>10} {'tokens/s':>8}"
    )
    for r in rows:
        kind, n = next(k for k in ("zero3", "zero2", "single") if k in r["name"]), r["ranks"]
        ideal = n_params * {"single": 16, "zero2": 4 + 12 / n, "zero3": 16 / n}[kind] / 2**30
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        print(
            f"{r['name']:<14} {n:>5} {r['training'] / 2**30:>14.2f} GiB {r['training'] / base['training']:>8.2f}x "
            f"{r['overall'] / 2**30:>17.2f} GiB {ideal:>6.2f} GiB {tps:>8}"
        )
    print(
        "state/rank: fp32 weights + gradients + Adam moments a rank holds by design (ZeRO-2 splits gradients"
        " and moments, ZeRO-3 the weights too); offload moves the split part to host memory, which on a CPU"
        " box is the same RAM"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
