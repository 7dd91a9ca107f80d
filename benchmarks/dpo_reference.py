#!/usr/bin/env python
"""DPO with the reference model in memory vs its log-probs computed once up front, side by side.

    python benchmarks/dpo_reference.py [--hidden 768] [--layers 12] [--pairs 16] [--batch 2] [--rounds 1]

Both are real `alignpipe stage dpo configs/tiny.yaml --input sft=MODEL` runs on one locally built
model (random init, one pretraining step: no hub), on the same `--pairs` preference pairs for one
epoch (so the reference sees each pair once either way):
- reference: TRL's default; the stage passes no ref_model, so TRL loads a second copy of the SFT
  weights and runs it forward at every step;
- precomputed: `preference.dpo.precompute_ref_log_probs=true`; TRL computes the reference
  log-probs of every pair once with the initial policy (the same SFT weights), before training,
  and keeps no reference model.
Printed per variant: peak RSS of the training process (sampled from /proc), wall time of the
stage, TRL's train_runtime, and the final train_loss, which must agree (same data, same
reference values; the tolerance printed is 1e-3 relative).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from peak_memory import REPO, local_model, run_sampled

ALIGNPIPE = REPO / ".venv" / "bin" / "alignpipe"


def run(name: str, model: Path, a) -> dict:
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
    if name == "precomputed":
        sets.append("preference.dpo.precompute_ref_log_probs=true")
    state = Path(tempfile.mkdtemp(prefix=f"dpo-{name}-"))
    cmd = [str(ALIGNPIPE), "stage", "dpo", "configs/tiny.yaml", "--input", f"sft={model}"]
    cmd += [x for s in sets for x in ("--set", s)]
    env = {**os.environ, "ALIGNPIPE_HOME": str(state), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    got = run_sampled(cmd, REPO, env)
    rc, out, peaks, wall = got["rc"], got["out"], got["peaks"], got["wall"]
    if rc != 0:
        raise SystemExit(f"{name}: the stage failed (rc {rc}):\n{out[-4000:]}")
    loss = [float(x) for x in re.findall(r"'train_loss': '([-\d.e+]+)'", out)]
    runtime = [float(x) for x in re.findall(r"'train_runtime': '([\d.]+)'", out)]
    return {
        "name": name,
        "peak_rss": max(rss for rss, _ in peaks.values()),
        "wall_s": wall,
        "train_runtime": runtime[-1] if runtime else None,
        "train_loss": loss[-1] if loss else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--pairs", type=int, default=16, help="preference pairs, one epoch (default 16)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="repeat both, alternating which goes first")
    a = p.parse_args(argv)

    model, n = local_model(a.hidden, a.layers)
    print(f"model {model.name}: {n / 1e6:.0f}M parameters (a reference copy in fp32: {n * 4 / 2**30:.2f} GiB)")
    rows = []
    for r in range(a.rounds):
        order = ("reference", "precomputed") if r % 2 == 0 else ("precomputed", "reference")
        rows += [run(name, model, a) for name in order]
    print(f"\n{'variant':<12} {'peak RSS':>10} {'wall':>7} {'train_runtime':>14} {'train_loss':>11}")
    for row in rows:
        print(
            f"{row['name']:<12} {row['peak_rss'] / 2**30:>6.2f} GiB {row['wall_s']:>6.0f}s "
            f"{row['train_runtime'] or float('nan'):>13.1f}s {row['train_loss'] or float('nan'):>11.5f}"
        )
    ref = [r for r in rows if r["name"] == "reference"]
    pre = [r for r in rows if r["name"] == "precomputed"]
    ratio = min(r["peak_rss"] for r in pre) / min(r["peak_rss"] for r in ref)
    same = all(abs(x["train_loss"] - y["train_loss"]) <= 1e-3 * abs(y["train_loss"]) for x, y in zip(pre, ref))
    print(f"precomputed vs reference: peak RSS {ratio:.2f}x; train_loss within 1e-3 relative: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
