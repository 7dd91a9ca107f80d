#!/usr/bin/env python
"""DPO vs PPO (and optionally the other preference methods) on the default suite: wall time and
the evaluation metrics, printed as one table.

    python benchmarks/dpo_vs_ppo.py [--config configs/tiny.yaml] [--methods dpo,ppo] [--set KEY=VALUE ...]

One shared select + SFT (the recipe's own settings), then each method's preference stage from
that SFT model with the recipe's per-method settings (`preference.<method>`); the methods that
need a reward model (ppo, rloo, grpo) share one `reward` stage, timed on its own. Then one
evaluation of SFT-only and every method's model on the frozen suite, with the reward model's
win rate against SFT where it was trained. Wall times are of the stage calls (model loading,
training, saving, MLflow logging), in seconds; `--methods all` runs all seven methods.
Everything lands in MLflow under a fresh state dir (printed), so the runs can be inspected.
Timings are wall-clock and noisy on a shared machine; OMP_NUM_THREADS is printed.
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "tiny.yaml"))
    p.add_argument("--methods", default="dpo,ppo", help="comma-separated, or 'all'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--state-dir", help="default: a fresh temporary dir")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["ALIGNPIPE_HOME"] = args.state_dir or tempfile.mkdtemp(prefix="dpo_vs_ppo-")
    os.environ.setdefault("ALIGNPIPE_CACHE", str(ROOT / ".alignpipe" / "cache"))

    from alignpipe.core.recipe import load_config
    from alignpipe.core.registry import NEEDS_REWARD, PREFERENCE_METHODS
    from alignpipe.flows.runner import run_stage

    methods = list(PREFERENCE_METHODS) if args.methods == "all" else args.methods.split(",")
    cfg = load_config(args.config, args.overrides)  # every problem reported before any compute
    configs = {m: load_config(args.config, [*args.overrides, f"preference.method={m}"]) for m in methods}
    print(
        f"state dir {cfg.state_path}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    wall: dict[str, float] = {}

    def timed(name, fn, *a):
        start = time.time()
        result = fn(*a)
        wall[name] = round(time.time() - start, 1)
        print(f"{name}: {wall[name]} s", flush=True)
        return result

    selected = timed("select", run_stage, cfg, "select", {})
    sft = timed("sft", run_stage, cfg, "sft", {"base": selected.model_path})
    trained_on = {"sft": sft.model_path, "template": sft.template}
    reward = timed("reward", run_stage, cfg, "reward", trained_on) if set(methods) & set(NEEDS_REWARD) else None
    paths = {"sft": sft.model_path}
    for m in methods:
        rm = reward.model_path if reward and m in NEEDS_REWARD else None
        paths[m] = timed(
            m, run_stage, configs[m], "preference", {"sft": sft.model_path, "template": sft.template, "reward": rm}
        ).model_path
    scored = {"models": paths, "template": sft.template, "reward": reward and reward.model_path}
    evaluation = timed("evaluate", run_stage, cfg, "evaluate", scored)

    print(
        "\nPreference methods on the frozen suite (wall_s: the stage alone; the methods marked * "
        f"also need the reward stage, {wall.get('reward', '-')} s, shared):"
    )
    print(table(evaluation.metrics, wall, NEEDS_REWARD))
    if reward:
        print(f"reward model held-out pair accuracy: {reward.metrics.get('eval_accuracy', float('nan')):.3f}")
    print("wall times (s): " + ", ".join(f"{k}={v}" for k, v in wall.items()))
    return 0


def table(metrics: dict, wall: dict, needs_reward) -> str:
    """One row per model: wall time, then every evaluation metric any model has."""
    from alignpipe.evaluation.stats import HEADLINE

    cols = [
        c
        for c in [*HEADLINE, "reward_accuracy", "reward_margin", "rm_score", "rm_win_rate"]
        if any(c in m for m in metrics.values())
    ]
    head = ["model", "wall_s"] + [f"{c}{'↑' if HEADLINE.get(c, 1) > 0 else '↓'}" for c in cols]
    rows = [head] + [
        [name + ("*" if name in needs_reward else ""), f"{wall.get(name, 0):.0f}"]
        + ["-" if m.get(c) is None else f"{m[c]:.3f}" for c in cols]
        for name, m in metrics.items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows
    )


if __name__ == "__main__":
    sys.exit(main())
