#!/usr/bin/env python
"""One-GPU check of the training stack: TRL SFT and DPO under DeepSpeed ZeRO-2 and ZeRO-3 (bf16) on a
locally built ~0.5B Qwen2-style model, and a 4-bit QLoRA run; tokens/s, peak GPU memory and MFU.

    python benchmarks/gpu_check.py [--out DIR] [--budget SECONDS] [--smoke]

Driven by benchmarks/gpu_check.sh (which installs the carried wheels on the GPU machine first). Each part
runs in its own process under a time budget (a fresh process: its own DeepSpeed state and peak-memory
counters; a hung or crashed part cannot take the others down); a failed part is one line in the table
and the next part runs. The exit code is 1 if any part failed.

- model: random init (no hub), Qwen2Config sized to ~0.5B parameters over the repo's own byte-level BPE
  tokenizer (alignpipe.training.models.build_tokenizer on demo.pretrain_corpus()), saved once in bf16.
- data: the repo's data/sft.jsonl and data/preference.jsonl, under the Alpaca template (alignpipe.data.templates).
- SFT: packing (TRL's BFD, padding-free), attn_implementation flash_attention_2 if `flash_attn` imports, else sdpa.
- DPO: TRL loads the reference model from the same dir; sdpa.
- ZeRO: the repo's deepspeed_configs/zero2.json and zero3.json as they are (DeepSpeed's fused Adam is built
  once, in its own part, before the runs; if it cannot be built the runs use a copy with torch's AdamW).
- tokens/s: non-pad tokens in the policy's training forward passes (a forward pre-hook; the DPO reference
  model's no-grad passes are not counted), over the steps after the first `--warmup` ones, CUDA-synchronised.
- MFU: 6 * parameters * tokens/s / 790 TFLOP/s (the bf16 matrix rate measured on this H200 kind), the usual
  training estimate; it leaves out attention, DPO's reference forward (+2N per token) and QLoRA's skipped
  weight gradients (-2N per token).

--smoke (or GPU_CHECK_SMOKE=1) runs the same code on the CPU: a tiny model, 2 steps, fp32, sdpa, DeepSpeed over
gloo (as alignpipe.training.launch.deepspeed_args does for CPU ranks), and LoRA without 4-bit quantization.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_FLOPS = 790e12  # measured 8192^3 bf16 matmul on the nvidia-h200 kind (device KINDS.md)
PARTS = ["build", "ds_ops", "sft_zero2", "sft_zero3", "dpo_zero2", "dpo_zero3", "qlora"]
# Seconds each part may take on the H200 (the driver also stops at --budget overall).
BUDGET = {"build": 60, "ds_ops": 150, "sft_zero2": 75, "sft_zero3": 75, "dpo_zero2": 75, "dpo_zero3": 85, "qlora": 75}
SMOKE_BUDGET = {p: 300 for p in PARTS}


def sizes(smoke: bool) -> dict:
    """Model shape and run sizes. Full: hidden 1536, 20 layers, 12 heads of 128, 2 KV heads, MLP 4096,
    about 0.49B parameters plus vocab x 1536 (tied)."""
    if smoke:
        model = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
        model.update(num_key_value_heads=2)
        return dict(model=model, steps=2, warmup=1, sft_batch=2, sft_len=128, dpo_batch=2, dpo_len=128, lora_steps=2)
    model = dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=20, num_attention_heads=12)
    model.update(num_key_value_heads=2)
    return dict(model=model, steps=30, warmup=5, sft_batch=8, sft_len=2048, dpo_batch=16, dpo_len=512, lora_steps=20)


# ---------------------------------------------------------------------------------------------
# Parts (each runs in its own process: `gpu_check.py --part NAME --work DIR --result FILE`)


def _repo_models():
    """alignpipe/training/models.py, loaded without alignpipe.training's __init__ (it imports MLflow and
    the stages' code, absent on the GPU machine)."""
    spec = importlib.util.spec_from_file_location("_alignpipe_models", REPO / "alignpipe" / "training" / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def part_build(work: Path, smoke: bool) -> dict:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from alignpipe.data import demo

    models = _repo_models()
    tok = AutoTokenizer.from_pretrained(models.build_tokenizer(2048, work / "tok", demo.pretrain_corpus()))
    config = Qwen2Config(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.convert_tokens_to_ids(models.EOS),
        bos_token_id=None,
        dtype="float32" if smoke else "bfloat16",
        **sizes(smoke)["model"],
    )
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    model.to(torch.float32 if smoke else torch.bfloat16).save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    info = {"parameters": params, "vocab": len(tok), **{k: v for k, v in sizes(smoke)["model"].items()}}
    (work / "model" / "gpu_check.json").write_text(json.dumps(info))
    return {"note": f"Qwen2 {params / 1e6:.2f}M params, vocab {len(tok)}"}


def part_ds_ops(work: Path, smoke: bool) -> dict:
    """Build DeepSpeed's fused Adam (what the configs' AdamW uses) once, into TORCH_EXTENSIONS_DIR."""
    from deepspeed.accelerator import get_accelerator

    started = time.monotonic()
    get_accelerator().create_op_builder("FusedAdamBuilder").load()
    return {"note": f"fused_adam ready in {time.monotonic() - started:.0f}s"}


class Meter:
    """Counts the policy's training tokens (forward pre-hook, on the device: no sync) and times the steps
    after the warm-up ones (a TrainerCallback; CUDA-synchronised)."""

    def __init__(self, warmup: int):
        self.warmup, self.total, self.start, self.end = warmup, 0, None, None
        self.t0 = self.t1 = None

    def hook(self, module, args, kwargs):
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        n = mask.sum() if mask is not None else (ids.numel() if ids is not None else 0)
        self.total = self.total + n

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if state.global_step == meter.warmup and meter.t0 is None:
                    meter.t0, meter.start = _synced_time(), meter.total

            def on_step_end(self, args, state, control, **kw):
                if state.global_step == state.max_steps:
                    meter.t1, meter.end = _synced_time(), meter.total

        return Clock()

    def tokens_per_s(self) -> tuple[float, int]:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("the timed steps did not run (too few steps?)")
        tokens = int(self.end - self.start)
        return tokens / (self.t1 - self.t0), tokens


def _synced_time() -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _cpu_deepspeed_state() -> None:
    """On a CPU, as alignpipe.training.launch.deepspeed_args: accelerate would take the rank for a plain
    CPU process, so its state is set up as DeepSpeed over gloo (and TrainingArguments told to use it)."""
    import deepspeed
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    PartialState(cpu=True).distributed_type = DistributedType.DEEPSPEED
    deepspeed.init_distributed(dist_backend="gloo", auto_mpi_discovery=False)


def _rows(name: str) -> list[dict]:
    with open(REPO / "data" / name) as f:
        return [json.loads(line) for line in f if line.strip()]


def _sft_data():
    from datasets import Dataset

    from alignpipe.data import templates

    rows = _rows("sft.jsonl")
    return Dataset.from_list(
        [{"prompt": templates.alpaca_prompt(r["instruction"], r["input"]), "completion": r["output"]} for r in rows]
    )


def _dpo_data():
    from datasets import Dataset

    from alignpipe.data import templates

    rows = _rows("preference.jsonl")
    return Dataset.from_list(
        [
            {
                "prompt": templates.alpaca_prompt(r["instruction"], r["input"]),
                "chosen": r["chosen"],
                "rejected": r["rejected"],
            }
            for r in rows
        ]
    )


def _attention(smoke: bool) -> str:
    if smoke:
        return "sdpa"
    try:
        import flash_attn  # noqa: F401

        return "flash_attention_2"
    except Exception:
        return "sdpa"


def _common_args(work: Path, name: str, smoke: bool, deepspeed: str | None, steps: int) -> dict:
    import torch

    args = dict(
        output_dir=str(work / "runs" / name),
        max_steps=steps,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=max(1, steps // 3),
        save_strategy="no",
        report_to="none",
        bf16=not smoke,
        gradient_accumulation_steps=1,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )
    if deepspeed:
        args["deepspeed"] = deepspeed
        if not torch.cuda.is_available():
            _cpu_deepspeed_state()
            args.update(use_cpu=False, accelerator_config={"use_configured_state": True})
    return args


def _zero_config(work: Path, stage: int) -> str:
    """The repo's config, or (when fused Adam could not be built) a copy that asks for torch's AdamW."""
    path = REPO / "deepspeed_configs" / f"zero{stage}.json"
    if not (work / "no_fused_adam").exists():
        return str(path)
    cfg = json.loads(path.read_text())
    cfg["optimizer"]["params"]["torch_adam"] = True
    out = work / f"zero{stage}_torch_adam.json"
    out.write_text(json.dumps(cfg, indent=2))
    return str(out)


def part_train(work: Path, smoke: bool, method: str, zero: int | None) -> dict:
    """SFT or DPO under ZeRO-2/3 (zero set), or QLoRA (method 'qlora', no DeepSpeed)."""
    import torch

    s = sizes(smoke)
    model_dir = str(work / "model")
    params = json.loads((work / "model" / "gpu_check.json").read_text())["parameters"]
    name = f"{method}_zero{zero}" if zero else method
    attn = _attention(smoke) if method != "dpo" else "sdpa"
    init = {"dtype": "float32" if smoke else "bfloat16", "attn_implementation": attn}
    deepspeed = _zero_config(work, zero) if zero else None
    steps = s["lora_steps"] if method == "qlora" else s["steps"]
    common = _common_args(work, name, smoke, deepspeed, steps)
    note = [f"attn={attn}"]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        # TRL loads the policy and the reference model from model_dir, both with model_init_kwargs
        batch, length = s["dpo_batch"], s["dpo_len"]
        args = DPOConfig(**common, per_device_train_batch_size=batch, max_length=length, model_init_kwargs=init)
        trainer = DPOTrainer(model=model_dir, args=args, train_dataset=_dpo_data())
    else:
        from trl import SFTConfig, SFTTrainer

        peft_config, model = None, model_dir
        extra = {"model_init_kwargs": init}
        if method == "qlora":
            from peft import LoraConfig, prepare_model_for_kbit_training
            from transformers import AutoModelForCausalLM

            quant = None
            if not smoke:
                from transformers import BitsAndBytesConfig

                quant = BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_compute_dtype=torch.bfloat16,
                    bnb_4bit_use_double_quant=True,
                )
            else:
                note.append("no 4-bit in smoke mode: plain LoRA")
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, quantization_config=quant, device_map={"": 0} if quant else None, **init
            )
            if quant:
                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
            extra = {}
        args = SFTConfig(
            **common, **extra, per_device_train_batch_size=s["sft_batch"], max_length=s["sft_len"], packing=True
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=_sft_data(), peft_config=peft_config)

    meter = Meter(s["warmup"])
    trainer.model.register_forward_pre_hook(meter.hook, with_kwargs=True)
    trainer.add_callback(meter.callback())
    out = trainer.train()
    if trainer.is_deepspeed_enabled:  # what actually ran: the engine's ZeRO stage and optimizer
        engine = trainer.model_wrapped
        note.append(f"deepspeed ZeRO-{engine.zero_optimization_stage()} {type(engine.optimizer).__name__}")
    tps, tokens = meter.tokens_per_s()
    row = {
        "tokens_per_s": round(tps, 1),
        "timed_tokens": tokens,
        "timed_steps": steps - s["warmup"],
        "train_loss": round(float(out.metrics.get("train_loss", float("nan"))), 4),
        "mfu": round(6 * params * tps / PEAK_BF16_FLOPS, 4),
        "parameters": params,
        "note": ", ".join(note),
    }
    if torch.cuda.is_available():
        row["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    if method == "qlora":
        row["trainable_parameters"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return row


def run_part(name: str, work: Path, smoke: bool) -> dict:
    if name == "build":
        return part_build(work, smoke)
    if name == "ds_ops":
        return part_ds_ops(work, smoke)
    if name == "qlora":
        if not smoke:
            try:
                import bitsandbytes  # noqa: F401
            except Exception as e:
                return {"status": "skipped", "note": f"bitsandbytes not importable: {type(e).__name__}: {e}"[:300]}
        return part_train(work, smoke, "qlora", None)
    method, zero = name.split("_zero")
    return part_train(work, smoke, method, int(zero))


# ---------------------------------------------------------------------------------------------
# The driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _environment(smoke: bool, rank: bool) -> dict[str, str]:
    """With `rank`, one rank as a launcher would start it (DeepSpeed and accelerate read these); fused ops
    cached in TORCH_EXTENSIONS_DIR."""
    env = dict(os.environ)
    if rank:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        env["MASTER_PORT"] = str(_free_port())
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", DS_ACCELERATOR="cpu" if smoke else "cuda")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".alignpipe" / "cache" / "torch_extensions"))
    if not smoke:
        env.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")  # build fused Adam for the H200 only
        env.setdefault("MAX_JOBS", "16")
    else:
        env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("PART-ERROR "):
            return ln[len("PART-ERROR ") :]
    found = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (found or lines or ["no output"])[-1][:300]


def drive(out: Path, budget: float, smoke: bool, parts: list[str]) -> int:
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    deadline = time.monotonic() + budget
    limits = SMOKE_BUDGET if smoke else BUDGET
    rows, logs = [], work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    mode = "SMOKE (CPU, tiny model)" if smoke else "full"
    print(f"gpu_check: {mode}; work dir {work}; budget {budget:.0f}s", flush=True)
    for name in parts:
        left = deadline - time.monotonic()
        row = {"part": name}
        if name != "build" and not (work / "model" / "gpu_check.json").exists():
            row.update(status="failed", note="no model (the build part failed)")
        elif left < 20:
            row.update(status="failed", note=f"not run: {left:.0f}s of the overall budget left")
        else:
            limit = min(limits[name], left)
            result = work / f"{name}.json"
            env = _environment(smoke, rank="zero" in name)
            cmd = [sys.executable, __file__, "--part", name, "--work", str(work), "--result", str(result)]
            cmd += ["--smoke"] if smoke else []
            started = time.monotonic()
            print(f"--- {name} (limit {limit:.0f}s)", flush=True)
            log = logs / f"{name}.log"
            with open(log, "w") as f:
                proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
                try:
                    rc = proc.wait(timeout=limit)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    rc = None
            row["seconds"] = round(time.monotonic() - started, 1)
            if rc is None:
                row.update(status="failed", note=f"timed out after {limit:.0f}s (killed)")
            elif rc != 0 or not result.exists():
                row.update(status="failed", note=_last_error(log.read_text(errors="replace")))
            else:
                row.update({"status": "ok", **json.loads(result.read_text())})
            if name == "ds_ops" and row["status"] != "ok":
                (work / "no_fused_adam").touch()
                row["note"] = f"{row.get('note', '')}; ZeRO runs use torch's AdamW (torch_adam) instead"
            print(f"{name}: {row['status']}: {row.get('note', '')}".rstrip(": "), flush=True)
        rows.append(row)
    report = summary(rows, smoke)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    with open(out / "gpu_check_parts.log", "w") as f:  # one file: the run tool brings back 8 at most
        for log in sorted(logs.glob("*.log"), key=lambda q: q.stat().st_mtime):
            f.write(f"===== {log.stem} (last 200 kB)\n{log.read_text(errors='replace')[-200_000:]}\n")
    print_table(report)
    print(f"\nJSON: {out / 'gpu_check.json'}; every part's log: {out / 'gpu_check_parts.log'}")
    return 1 if any(r["status"] == "failed" for r in rows) else 0


def summary(rows: list[dict], smoke: bool) -> dict:
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    for dist in ("transformers", "trl", "deepspeed", "peft", "accelerate", "datasets", "bitsandbytes", "flash-attn"):
        try:
            env[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            env[dist] = None
    env["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "smoke": smoke,
        "environment": env,
        "mfu_formula": f"6 * parameters * tokens/s / {PEAK_BF16_FLOPS:.3g} FLOP/s (bf16, measured on this H200 kind)",
        "tokens": "non-pad tokens of the policy's training forward passes, steps after the warm-up ones",
        "rows": rows,
    }


def print_table(report: dict) -> None:
    cols = [("part", 10), ("status", 7), ("seconds", 7), ("tokens_per_s", 12), ("peak_allocated_gib", 9)]
    cols += [("peak_reserved_gib", 9), ("mfu", 6), ("train_loss", 10)]
    heads = {"peak_allocated_gib": "alloc GiB", "peak_reserved_gib": "resv GiB", "tokens_per_s": "tokens/s"}
    print("\n" + " ".join(f"{heads.get(c, c):>{w}}" for c, w in cols) + "  note")
    for r in report["rows"]:
        cells = []
        for c, w in cols:
            v = r.get(c, "-")
            v = f"{v:.1%}" if c == "mfu" and isinstance(v, float) else v
            cells.append(f"{v!s:>{w}}")
        print(" ".join(cells) + "  " + str(r.get("note", "")))
    e = report["environment"]
    print(f"MFU = {report['mfu_formula']}; tokens/s counts {report['tokens']}")
    print("; ".join(f"{k} {v}" for k, v in e.items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT") or None, help="where gpu_check.json goes (default $OUT)")
    p.add_argument("--budget", type=float, default=None, help="seconds for all parts (default 420; smoke 1200)")
    p.add_argument("--smoke", action="store_true", default=os.environ.get("GPU_CHECK_SMOKE") == "1")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--part", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.part:
        try:
            row = run_part(a.part, Path(a.work), a.smoke)
        except Exception as e:
            traceback.print_exc()
            first = (str(e).strip().splitlines() or [""])[0]
            print(f"PART-ERROR {type(e).__name__}: {first}"[:400], flush=True)
            return 1
        Path(a.result).write_text(json.dumps(row))
        return 0
    out = Path(a.out or tempfile.mkdtemp(prefix="gpu_check-out-"))
    budget = a.budget or (1200 if a.smoke else 420)
    return drive(out, budget, a.smoke, a.parts.split(","))


if __name__ == "__main__":
    sys.exit(main())
