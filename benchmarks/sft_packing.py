#!/usr/bin/env python
"""SFT throughput on real Alpaca rows: padded vs packed vs padding-free (TRL SFTTrainer, CPU).

    python benchmarks/sft_packing.py [--data PATH] [--steps N] [--max-length L]

Every variant is a real `trainer.train()` run of the SFT stage's setup (the tiny model from
configs/tiny.yaml's first candidate, the stage's own prompt/completion rows, full fine-tune,
bf16 off) for the same number of optimizer steps and the same per-device batch size:

- padded:        packing=False; the collator pads each batch to its longest row.
- packed:        packing=True (TRL's default BFD strategy), as the SFT stage runs it without
                 flash-attention: each packed row (at most max_length tokens) stays a row, with
                 position_ids restarting per example and no attention_mask, so transformers builds
                 a block-diagonal mask per row (alignpipe.core.trl_api.PackedRowsCollator).
- packed_flat:   packing=True exactly as TRL does it: the batch's rows flattened into one sequence
                 of up to batch x max_length tokens (right for flash-attention's varlen kernels;
                 with SDPA its one mask and attention cost (batch x max_length)^2).
- padding_free:  padding_free=True without packing. TRL refuses this with max_length set (it would
                 not be enforced), so it is retried with max_length=None: rows are NOT truncated.

Reported per variant: wall time of trainer.train(), real (non-pad) tokens per second, the fraction
of non-pad tokens in the collated batches, and the mean training loss. Real tokens are counted on
the data collator's outputs by iterating the trainer's train dataloader for the same number of
steps: attention_mask.sum() when there is a mask, else every token of the flattened sequence
(padding-free batches hold no pads unless pad_to_multiple_of is set, which is discounted).
TRL's own `num_tokens` counter from the run is shown alongside as a cross-check.

Timings are wall-clock and noisy on a shared machine (load averages are printed): compare runs on an idle
box before drawing conclusions. OMP_WAIT_POLICY defaults to PASSIVE here (set it yourself to override):
OpenMP's spin-waiting made steps 3-25x slower on the shared 2-core box whenever other processes ran.
First run only: the tiny model is built and pretrained into $ALIGNPIPE_CACHE (minutes), then reused.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared/data/alpaca_2k.jsonl"
RECIPE = REPO / "configs/tiny.yaml"
BATCH = 8
# Fields this benchmark sets itself; every other field of the recipe's `sft` section is kept.
OVERRIDDEN = {
    "max_steps",
    "per_device_train_batch_size",
    "max_length",
    "packing",
    "padding_free",
    "logging_steps",
    "save_steps",
    "save_strategy",
    "eval_strategy",
    "bf16",
    "fp16",
    "gradient_accumulation_steps",
    "num_train_epochs",
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"Alpaca-style .jsonl (default: {DEFAULT_DATA})")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per variant (default: 30)")
    p.add_argument("--max-length", type=int, default=512, help="SFTConfig.max_length for padded/packed (default: 512)")
    a = p.parse_args(argv)
    if a.steps < 1 or a.max_length < 8:
        p.error("--steps must be >= 1 and --max-length >= 8")
    return a


def count_batches(trainer, steps: int) -> tuple[int, int]:
    """(real tokens, total tokens) in the first `steps` collated train batches (re-iterating epochs)."""
    from alignpipe.core.trl_api import real_tokens

    real = total = 0
    seen = 0
    while seen < steps:
        dl = trainer.get_train_dataloader()
        if len(dl) == 0:
            break
        for batch in dl:
            ids = batch["input_ids"]
            total += ids.numel()
            if "attention_mask" in batch:
                real += int(batch["attention_mask"].sum())
            elif "position_ids" in batch:
                # packed rows or one flattened sequence: all tokens are real but a row's pad tail
                real += real_tokens(batch, trainer.processing_class.pad_token_id)
            else:
                real += ids.numel()
            seen += 1
            if seen >= steps:
                break
    return real, total


def run_variant(name: str, extra: dict, *, source: str, cfg, tok, dataset, steps: int, max_length: int) -> dict:
    from trl import SFTTrainer

    from alignpipe.core import trl_api
    from alignpipe.training import models

    user = {k: v for k, v in cfg.sft.trl.items() if k not in OVERRIDDEN}
    ours = {
        "seed": cfg.seed,
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "gradient_accumulation_steps": 1,
        "max_length": max_length,
        "logging_steps": max(1, steps),
        "save_strategy": "no",
        "eval_strategy": "no",
        "bf16": False,
        "fp16": False,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **extra,
    }
    note = ""
    with tempfile.TemporaryDirectory(prefix=f"sft-bench-{name}-") as out:
        model = models.load_model(source, cfg.model)
        try:
            args = trl_api.make_config("sft", out, user, ours=ours)
            make = SFTTrainer if name == "packed_flat" else functools.partial(trl_api.trainer, "sft")
            trainer = make(model=model, args=args, train_dataset=dataset, processing_class=tok)
        except ValueError as e:
            if not (extra.get("padding_free") and not extra.get("packing") and ours["max_length"] is not None):
                return {"name": name, "error": _first_line(e)}
            # TRL: "padding_free=True without packing needs max_length=None"; retry exactly that way.
            note = f"max_length={max_length} rejected by TRL ({_first_line(e)}); ran with max_length=None (rows not truncated)"  # noqa: E501
            ours["max_length"] = None
            try:
                args = trl_api.make_config("sft", out, user, ours=ours)
                trainer = trl_api.trainer("sft", model=model, args=args, train_dataset=dataset, processing_class=tok)
            except (ValueError, TypeError) as e2:
                return {"name": name, "error": f"{note}; then: {_first_line(e2)}"}
        except TypeError as e:
            return {"name": name, "error": _first_line(e)}

        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # keep the output to this script's table
        real, total = count_batches(trainer, steps)
        started, cpu_started = time.perf_counter(), time.process_time()
        result = trainer.train()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        trl_tokens = next((h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None)
        return {
            "name": name,
            "steps": trainer.state.global_step,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "real_tokens": real,
            "total_tokens": total,
            "trl_tokens": int(trl_tokens) if trl_tokens is not None else None,
            "loss": float(result.training_loss),
            "train_rows": len(trainer.train_dataset),
            "note": note,
        }


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def print_table(results: list[dict]) -> None:
    head = [
        "variant",
        "steps",
        "seconds",
        "real tokens/s",
        "non-pad fraction",
        "train loss",
        "real tokens",
        "TRL num_tokens",
        "cpu s",
    ]
    lines = []
    for r in results:
        if "error" in r:
            lines.append([r["name"]] + ["n/a"] * (len(head) - 1))
            continue
        lines.append(
            [
                r["name"],
                str(r["steps"]),
                f"{r['seconds']:.1f}",
                f"{r['real_tokens'] / r['seconds']:,.0f}",
                f"{r['real_tokens'] / r['total_tokens']:.3f}" if r["total_tokens"] else "n/a",
                f"{r['loss']:.4f}" if math.isfinite(r["loss"]) else "nan",
                f"{r['real_tokens']:,}",
                f"{r['trl_tokens']:,}" if r["trl_tokens"] is not None else "-",
                f"{r['cpu_seconds']:.1f}",
            ]
        )
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]

    def fmt(cells):
        return " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt(head))
    print("-+-".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))
    for r in results:
        if "error" in r:
            print(f"  {r['name']}: n/a: {r['error']}")
        elif r.get("note"):
            print(f"  {r['name']}: {r['note']}")
        if "error" not in r and r["trl_tokens"] is not None and r["trl_tokens"] != r["real_tokens"]:
            print(
                f"  {r['name']}: note: dataloader count ({r['real_tokens']:,}) differs from TRL's num_tokens ({r['trl_tokens']:,})"  # noqa: E501
            )
    by = {r["name"]: r for r in results if "error" not in r}
    if "padded" in by:
        tps = {name: r["real_tokens"] / r["seconds"] for name, r in by.items()}
        for name in ("packed", "packed_flat", "padding_free"):
            if name in tps:
                print(f"{name}/padded (real tokens/s): {tps[name] / tps['padded']:.2f}x")


def main(argv=None) -> int:
    a = parse_args(argv)
    data_path = a.data.expanduser()
    if not data_path.is_file():
        print(f"sft_packing: data file {data_path} not found; pass an Alpaca-style .jsonl with --data PATH")
        return 0
    os.environ.setdefault("ALIGNPIPE_CACHE", str(REPO / ".alignpipe" / "cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # OpenMP's default spin-waiting makes every op wait for a descheduled thread when other processes share the
    # cores: 3-25x slower steps measured on the shared 2-core box. Passive waiting is as fast when the box is idle.
    # Must be set before torch (libgomp) is loaded; an explicit OMP_WAIT_POLICY in the environment wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, str(REPO))

    import torch

    torch.set_num_threads(2)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("trl").setLevel(logging.ERROR)  # "packing without flash attention": see the note printed below
    warnings.filterwarnings("ignore", category=UserWarning)
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()

    from alignpipe import data, training
    from alignpipe.core.recipe import load_config
    from alignpipe.training import models

    cfg = load_config(RECIPE)
    candidate = cfg.model.candidates[0]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    source = models.resolve(candidate, cfg)
    tok = models.load_tokenizer(source, cfg.model)
    rows = data.load("sft", data_path)
    dataset = training.sft_dataset(rows, cfg.sft.template)
    attn = getattr(models.load_model(source, cfg.model).config, "_attn_implementation", "?")
    print(
        f"sft_packing: {len(rows)} rows from {data_path}; model {candidate.name} ({source}, attn={attn}, "
        f"ready in {time.perf_counter() - t0:.1f}s); template {cfg.sft.template}; batch {BATCH}; "
        f"steps {a.steps}; max_length {a.max_length}; threads {torch.get_num_threads()} "
        f"(OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']})"
    )

    variants = [
        ("padded", {"packing": False}),
        ("packed", {"packing": True}),
        ("packed_flat", {"packing": True}),
        ("padding_free", {"packing": False, "padding_free": True}),
    ]
    results = []
    for name, extra in variants:
        t = time.perf_counter()
        r = run_variant(
            name, extra, source=source, cfg=cfg, tok=tok, dataset=dataset, steps=a.steps, max_length=a.max_length
        )
        status = (
            r.get("error") or f"train {r['seconds']:.1f}s; {r['train_rows']} train sequences after TRL's preparation"
        )
        print(f"  {name}: done in {time.perf_counter() - t:.1f}s ({status})", flush=True)
        results.append(r)
    print()
    print_table(results)
    cores = os.cpu_count() or 1
    print(
        f"load average at start/end: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {cores} cores"
        + (
            " (other processes shared the CPU: timings are noisy; compare runs on an idle box)"
            if max(load_before, os.getloadavg()[0]) > cores + 0.5
            else ""
        )
    )
    print(
        f"attention: {attn}. packed keeps each packed row apart ({BATCH} rows of up to {a.max_length} tokens, a "
        f"block-diagonal mask per row); packed_flat is TRL's one flattened sequence of up to {BATCH}x{a.max_length} "
        "tokens, which only flash-attention's varlen kernels run without an O(length^2) mask."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
