#!/usr/bin/env python
"""Distillation on the tiny recipe: the smaller candidate distilled from the larger one after SFT,
in each mode, against the same student SFT-only on the same data, in one table.

    python benchmarks/distill.py [--config configs/tiny.yaml] [--seeds 3] [--set KEY=VALUE ...]

The teacher is the larger candidate (by parameters) after SFT with the recipe's settings, trained
once; the student is the smaller candidate. Per training seed, the student is trained three ways
on the same SFT data: SFT-only (`student_sft`), `sequence` (on the teacher's answers) and `logits`
(the teacher's token distributions, from the student's SFT model, `distill.start: sft`). One
evaluation then scores the teacher and the three students on the frozen suite, with 95% intervals
over items and seeds and paired differences (alignpipe.evaluation.stats). Wall times are of the stage calls
(model loading, the teacher's generation, training, saving, MLflow logging), seconds per seed.
Everything lands in MLflow under a fresh state dir (printed).
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
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the students (42, 43, ...)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--state-dir", help="default: a fresh temporary dir")
    args = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["ALIGNPIPE_HOME"] = args.state_dir or tempfile.mkdtemp(prefix="distill-")
    os.environ.setdefault("ALIGNPIPE_CACHE", str(ROOT / ".alignpipe" / "cache"))

    import torch

    from alignpipe.core.recipe import load_config
    from alignpipe.evaluation.compare import format_table, verdict_lines
    from alignpipe.flows.runner import run_stage
    from alignpipe.training import models

    seeds = [42 + i for i in range(args.seeds)]
    base = [*args.overrides, "distill.enabled=true"]
    cfg = load_config(args.config, [*base, f"seeds={seeds}"])  # every problem reported before any compute
    by_size = sorted(
        (models.count_parameters(models.resolve(c, cfg), cfg.model), c.name, models.resolve(c, cfg))
        for c in cfg.model.candidates
    )
    (student_params, student_name, student), (teacher_params, teacher_name, teacher_base) = by_size[0], by_size[-1]
    print(
        f"state dir {cfg.state_path}; CPU kernels {torch.backends.cpu.get_cpu_capability()}; "
        f"load average {os.getloadavg()[0]:.1f}; teacher {teacher_name} ({teacher_params:,} parameters) after SFT, "
        f"student {student_name} ({student_params:,}); seeds {seeds}",
        flush=True,
    )
    wall: dict[str, list[float]] = {}

    def timed(name, fn, *a, **kw):
        start = time.time()
        result = fn(*a, **kw)
        wall.setdefault(name, []).append(round(time.time() - start, 1))
        print(f"{name}: {wall[name][-1]} s", flush=True)
        return result

    one = load_config(args.config, [*base, "seed=42"])
    teacher = timed("teacher_sft", run_stage, one, "sft", {"base": teacher_base}).model_path
    paths: dict[str, list[str]] = {"student_sft": [], "student_sequence": [], "student_logits": []}
    for seed in seeds:
        at = [*base, f"seed={seed}", f"distill.student={student_name}"]
        twin = timed(
            "student_sft", run_stage, load_config(args.config, at), "student_sft", {"base": student}
        ).model_path
        paths["student_sft"].append(twin)
        for mode in ("sequence", "logits"):
            mode_cfg = load_config(args.config, [*at, f"distill.mode={mode}"])
            pair = {"teacher": teacher, "student": student, "student_sft": twin, "template": cfg.sft.template}
            done = timed(f"student_{mode}", run_stage, mode_cfg, "distill", pair)
            paths[f"student_{mode}"].append(done.model_path)
    scored = {"teacher": teacher, **paths}
    evaluation = timed("evaluate", run_stage, cfg, "evaluate", {"models": scored, "template": cfg.sft.template})

    m, details = evaluation.metrics, evaluation.details
    print(f"\nEvaluation (value [95% interval over items and {len(seeds)} seed(s)]; paired differences):")
    print(format_table(m, details["intervals"], details["comparisons"]))
    pairs = [("student_sequence", "student_sft"), ("student_logits", "student_sft"), ("student_sft", "teacher")]
    for line in verdict_lines(details["comparisons"], pairs):
        print(line)
    print("\nmodel               parameters  vs teacher  wall s/seed  acc_seen [95%]          heldout_loss [95%]")
    sizes = {"teacher": teacher_params}
    for name in scored:
        params = sizes.get(name, student_params)
        train = wall["teacher_sft"] if name == "teacher" else wall[name]
        mean = sum(train) / len(train)
        acc, loss = details["intervals"][name]["acc_seen"], details["intervals"][name]["heldout_loss"]
        print(
            f"{name:<18} {params:>11,}  {params / teacher_params:>9.3f}  {mean:>11.1f}  "
            f"{m[name]['acc_seen']:.3f} [{acc[0]:.3f}, {acc[1]:.3f}]  "
            f"{m[name]['heldout_loss']:.3f} [{loss[0]:.3f}, {loss[1]:.3f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
