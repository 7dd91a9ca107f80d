#!/usr/bin/env python
"""Evaluation's greedy generation, batched vs one prompt at a time, side by side in one run.

    python benchmarks/eval_batching.py [--rows N] [--batch-size B] [--max-new-tokens T] [--rounds R]

On the default suite: configs/tiny.yaml's eval rows, its template and its first tiny candidate
(built into $ALIGNPIPE_CACHE on first use). The evaluate stage generates with
alignpipe.evaluation.scoring.generate, which left-pads each batch of `evaluate.batch_size` prompts;
`--batch-size 1` is the one-by-one baseline. Each round times both, alternating which goes first;
printed: prompts/s of each, the ratio per round and its median, and how many greedy outputs differ
between the two (tests/test_models.py requires none on a handful of prompts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("ALIGNPIPE_CACHE", str(REPO / ".alignpipe" / "cache"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=128, help="eval rows to generate for (default 128)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the recipe's evaluate.batch_size")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the recipe's evaluate.max_new_tokens")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)

    import torch

    from alignpipe import data
    from alignpipe.core.recipe import load_config
    from alignpipe.data import templates
    from alignpipe.evaluation import scoring
    from alignpipe.training import models

    cfg = load_config(str(REPO / "configs" / "tiny.yaml"))
    batch = a.batch_size or cfg.evaluate.batch_size
    new_tokens = a.max_new_tokens or cfg.evaluate.max_new_tokens
    path = models.resolve(cfg.model.candidates[0], cfg)
    model = models.load_model(path, cfg.model).eval()
    tok = models.load_tokenizer(path, cfg.model)
    rows = data.eval_rows(cfg, "eval")[: a.rows]
    prompts = [
        templates.generation_prompt(cfg.sft.template, tok, r["instruction"], r["input"], r.get("history"))
        for r in rows
    ]
    print(
        f"model {Path(path).name}, {len(prompts)} prompts, max_new_tokens {new_tokens}, torch threads "
        f"{torch.get_num_threads()}, CPU kernels {torch.backends.cpu.get_cpu_capability()}"
    )

    def timed(size: int) -> tuple[float, list[str]]:
        start = time.perf_counter()
        out = scoring.generate(model, tok, prompts, new_tokens, size, label=None)
        return len(prompts) / (time.perf_counter() - start), out

    ratios = []
    print(f"{'round':>5} {'one-by-one p/s':>15} {f'batch {batch} p/s':>14} {'ratio':>7} {'outputs differ':>15}")
    for r in range(a.rounds):
        order = (1, batch) if r % 2 == 0 else (batch, 1)
        got = {size: timed(size) for size in order}
        (single, one_out), (batched, many_out) = got[1], got[batch]
        ratios.append(batched / single)
        differ = sum(x != y for x, y in zip(one_out, many_out))
        print(f"{r + 1:>5} {single:>15.1f} {batched:>14.1f} {batched / single:>6.2f}x {differ:>8}/{len(prompts)}")
    print(f"batched vs one-by-one: {statistics.median(ratios):.2f}x prompts/s (median of {len(ratios)} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
