#!/usr/bin/env python
"""DPO with the reference model in memory, with its log-probs computed once, and read from the cache.

    python benchmarks/dpo_reference.py [--hidden 768] [--layers 12] [--pairs 16] [--batch 2] [--rounds 1]

All are real `alignpipe stage dpo configs/tiny.yaml --input sft=MODEL` runs on one locally built
model (random init, one pretraining step: no hub), on the same `--pairs` preference pairs for one
epoch (so the reference sees each pair once either way), each in a fresh state dir:
- reference: `preference.dpo.precompute_ref_log_probs=false`; the stage passes no ref_model, so
  TRL loads a second copy of the SFT weights and runs it forward at every step;
- fresh: the default (precompute); TRL computes the reference log-probs of every pair once with
  the initial policy (the same SFT weights) before training and keeps no reference model; the
  stage saves them under a new, empty $ALIGNPIPE_CACHE (`<cache>/ref_logps/<key>.parquet`);
- cached: the same stage again on that cache: it reads the artifact; no reference pass at all.
Printed side by side: peak RSS of the training process (sampled from /proc), wall time of the
stage, TRL's train_runtime, and the final train_loss, which must agree (cached vs fresh: 1e-5;
fresh vs reference: 1e-3 relative).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from peak_memory import REPO, local_model, run_sampled

VENV_CLI = REPO / ".venv" / "bin" / "alignpipe"
CLI = [str(VENV_CLI)] if VENV_CLI.exists() else [sys.executable, "-m", "alignpipe.cli"]
VARIANTS = ("reference", "fresh", "cached")


def run(name: str, model: Path, cache: Path, a) -> dict:
    sets = [
        f"data.preference.max_rows={a.pairs}",
        "data.validation_rows=8",
        f"preference.per_device_train_batch_size={a.batch}",
        f"preference.max_steps={a.pairs // a.batch}",
        "preference.max_length=128",
        "preference.save_steps=100000",
        "preference.logging_steps=1",
        "tracking.log_model_weights=false",
    ]
    if name == "reference":
        sets.append("preference.dpo.precompute_ref_log_probs=false")
    state = Path(tempfile.mkdtemp(prefix=f"dpo-{name}-"))
    cmd = [*CLI, "stage", "dpo", "configs/tiny.yaml", "--input", f"sft={model}"]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {
        **os.environ,
        "ALIGNPIPE_HOME": str(state),
        "ALIGNPIPE_CACHE": str(cache),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }
    try:
        got = run_sampled(cmd, REPO, env)
    finally:
        shutil.rmtree(state, ignore_errors=True)  # its model and checkpoints: 1.4 GiB at the default size
    rc, out, peaks, wall = got["rc"], got["out"], got["peaks"], got["wall"]
    if rc != 0:
        raise SystemExit(f"{name}: the stage failed (rc {rc}):\n{out[-4000:]}")
    said = {
        "reference": "reference log-probs for",
        "fresh": "reference log-probs for train: computed",
        "cached": "reference log-probs for train: reusing",
    }[name]
    if (said in out) != (name != "reference"):
        raise SystemExit(f"{name}: expected {'no ' if name == 'reference' else ''}line {said!r}:\n{out[-4000:]}")
    loss = [float(x) for x in re.findall(r"'train_loss': '([-\d.e+]+)'", out)]
    runtime = [float(x) for x in re.findall(r"'train_runtime': '([\d.]+)'", out)]
    return {
        "name": name,
        "peak_rss": max(rss for rss, _ in peaks.values()),
        "wall_s": wall,
        "train_runtime": runtime[-1] if runtime else float("nan"),
        "train_loss": loss[-1] if loss else float("nan"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--pairs", type=int, default=16, help="preference pairs, one epoch (default 16)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat all three, alternating where reference goes")
    a = p.parse_args(argv)

    model, n = local_model(a.hidden, a.layers)
    print(f"model {model.name}: {n / 1e6:.0f}M parameters (a reference copy in fp32: {n * 4 / 2**30:.2f} GiB)")
    rounds = []
    for r in range(a.rounds):
        cache = Path(tempfile.mkdtemp(prefix="dpo-cache-"))  # empty: `fresh` writes the artifact `cached` reads
        order = VARIANTS if r % 2 == 0 else ("fresh", "cached", "reference")
        rounds.append({name: run(name, model, cache, a) for name in order})
        shutil.rmtree(cache, ignore_errors=True)
    for r, got in enumerate(rounds):
        print(f"\nround {r + 1}   {'reference':>12} {'fresh':>12} {'cached':>12}")
        rows = (
            ("peak RSS", lambda v: f"{v['peak_rss'] / 2**30:.2f} GiB"),
            ("wall", lambda v: f"{v['wall_s']:.0f} s"),
            ("train_runtime", lambda v: f"{v['train_runtime']:.1f} s"),
            ("train_loss", lambda v: f"{v['train_loss']:.5f}"),
        )
        for label, show in rows:
            print(f"{label:<13} " + " ".join(f"{show(got[name]):>12}" for name in VARIANTS))
    ref, fresh, cached = ([g[name] for g in rounds] for name in VARIANTS)

    def low(rows):
        return min(r["peak_rss"] for r in rows)

    print(
        f"\npeak RSS vs reference: fresh {low(fresh) / low(ref):.2f}x, cached {low(cached) / low(ref):.2f}x; "
        f"train_loss cached == fresh within 1e-5: "
        f"{all(abs(c['train_loss'] - f['train_loss']) <= 1e-5 for c, f in zip(cached, fresh))}; "
        f"fresh vs reference within 1e-3 relative: "
        f"{all(abs(f['train_loss'] - r['train_loss']) <= 1e-3 * abs(r['train_loss']) for f, r in zip(fresh, ref))}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
