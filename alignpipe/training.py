"""Pieces the training stages share: where outputs go, LoRA, resuming, saving the final model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from alignpipe import tracking
from alignpipe.config import LoraSection, PipelineConfig


class IntegrityError(RuntimeError):
    """A saved model that is incomplete, mis-shaped or unusable."""


def stage_dir(cfg: PipelineConfig, stage: str, inputs: dict[str, Any]) -> Path:
    """One folder per distinct set of inputs, so a checkpoint is only ever resumed by the same job."""
    d = cfg.distributed
    if d.num_processes > 1 or d.deepspeed:  # a DeepSpeed/N-rank checkpoint only resumes the same setup
        ds = hashlib.sha256(Path(d.deepspeed).read_bytes()).hexdigest()[:12] if d.deepspeed else None
        inputs = {**inputs, "distributed": {"num_processes": d.num_processes, "deepspeed": ds}}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cfg.run_dir / f"{stage}-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True, default=str))
    return out


def common_args(cfg: PipelineConfig) -> dict[str, Any]:
    """Trainer arguments every training stage sets; the user's section overrides them.

    Inside a launched rank with a DeepSpeed config, the trainer gets it (`launch.deepspeed_args`)."""
    args = {
        "seed": cfg.seed,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "eval_strategy": "no",
        "report_to": cfg.tracking.report_to or "none",
    }
    from alignpipe import launch

    if cfg.distributed.deepspeed and launch.in_rank():
        args.update(launch.deepspeed_args(cfg))
    return args


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete `checkpoint-N` in the folder, to resume from after a crash."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1])))


def lora_config(section: LoraSection | None, task_type: str = "CAUSAL_LM"):
    """peft LoraConfig; task_type SEQ_CLS for a reward model (its score head is trained in full)."""
    if section is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        task_type=task_type,
    )


def save_final(trainer, tokenizer, out: Path) -> Path:
    """Save a plain, loadable model dir (LoRA adapters merged in), written only once complete.

    Under DeepSpeed every rank must call this: `trainer.save_model` gathers ZeRO-3 shards into
    full weights (stage3_gather_16bit_weights_on_model_save); only rank 0 writes files."""
    if not trainer.is_deepspeed_enabled:
        return save_model(trainer.model, tokenizer, out) if tracking.is_main() else out
    tmp = out.with_name(out.name + ".tmp")
    main = tracking.is_main()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    if main and hasattr(trainer.model, "merge_and_unload"):  # adapters saved: merge them on rank 0
        from peft import AutoPeftModelForCausalLM

        AutoPeftModelForCausalLM.from_pretrained(str(tmp)).merge_and_unload().save_pretrained(tmp)
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            (tmp / f).unlink(missing_ok=True)
    if main:
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def save_model(model, tokenizer, out: Path) -> Path:
    """Save one process's model (LoRA adapters merged in) and tokenizer, written only once complete."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def check_integrity(model_dir: Path, config, tokenizer) -> dict[str, Any]:
    """Check a saved model against the config it was trained with; IntegrityError if it fails.

    Same tensor names and shapes as the architecture implies (tied weights may be stored once),
    no empty tensor (the classic ZeRO-3 save failure), reloads with from_pretrained, generates."""
    from transformers.integrations import deepspeed as hf_ds

    zero3, hf_ds._hf_deepspeed_config_weak_ref = hf_ds._hf_deepspeed_config_weak_ref, None  # build/load plainly, not via zero.Init
    try:
        return _check_integrity(model_dir, config, tokenizer)
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = zero3


def _check_integrity(model_dir: Path, config, tokenizer) -> dict[str, Any]:
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    saved = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            saved.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    with torch.device("meta"):
        expected_model = AutoModelForCausalLM.from_config(config)
    expected = {k: tuple(v.shape) for k, v in expected_model.state_dict().items()}
    tied = {k for k in expected if k not in saved and config.get_text_config().tie_word_embeddings and "lm_head" in k}
    problems = [f"empty tensor {k} {s}" for k, s in saved.items() if 0 in s or not s]
    problems += [f"missing tensor {k}" for k in sorted(set(expected) - set(saved) - tied)]
    problems += [f"unexpected tensor {k}" for k in sorted(set(saved) - set(expected))]
    problems += [f"{k}: shape {saved[k]} != expected {expected[k]}" for k in saved if k in expected and saved[k] != expected[k]]
    expected_params = sum(p.numel() for p in expected_model.parameters())
    report: dict[str, Any] = {"tensors": len(saved), "expected_params": expected_params}
    if not problems:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        report["params"] = sum(p.numel() for p in model.parameters())
        if report["params"] != expected_params:
            problems.append(f"{report['params']} parameters reloaded, {expected_params} expected")
        if any(not torch.isfinite(p).all() for p in model.parameters()):
            problems.append("non-finite weights")
        ids = tokenizer("### Instruction:\nSay hello.\n\n### Response:\n", return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        new = gen[0, ids["input_ids"].shape[1]:]
        report["generated_tokens"] = int(new.numel())
        report["ends_with_eos"] = bool(new.numel() and int(new[-1]) == tokenizer.eos_token_id)
        report["generated"] = tokenizer.decode(new, skip_special_tokens=True)
        if new.numel() == 0:
            problems.append("generated nothing")
    if problems:
        raise IntegrityError(f"{model_dir}: saved model failed the integrity check: " + "; ".join(problems))
    return report


def fit(trainer, tokenizer, out: Path, stage: str) -> tuple[dict[str, float], Path]:
    """Train (resuming from the newest checkpoint in `out`), evaluate, log, save the final model.

    Returns the final metrics and the saved model dir. Runs inside the stage's MLflow run.
    """
    resume = last_checkpoint(out / "checkpoints")
    if resume:
        print(f"{stage}: resuming from {resume}")
        tracking.set_tag("alignpipe.resumed_from", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))}
    metrics["global_step"] = float(trainer.state.global_step)
    if trainer.eval_dataset is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    tracking.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})
    model_dir = save_final(trainer, tokenizer, out / "model")
    if trainer.is_deepspeed_enabled and tracking.is_main():
        config = getattr(trainer.model, "get_base_model", lambda: trainer.model)().config
        report = check_integrity(model_dir, config, tokenizer)
        print(f"{stage}: integrity OK: {json.dumps(report)}")
        tracking.log_json(report, "integrity.json")
    tracking.log_model(model_dir, stage)
    return metrics, model_dir


def pair_dataset(rows: list[dict], template: str, variation: float = 0.0, seed: int = 0):
    """Preference rows as TRL prompt/chosen/rejected rows under the SFT stage's template (a
    `variation` share of them under a varied template, as in SFT)."""
    from datasets import Dataset

    from alignpipe import templates

    return Dataset.from_list(
        [
            {
                "prompt": templates.training_prompt(template, r["instruction"], r["input"], r.get("history"),
                                                    templates.pick_variant(r, variation, seed)),
                "chosen": templates.training_completion(template, r["chosen"]),
                "rejected": templates.training_completion(template, r["rejected"]),
            }
            for r in rows
        ]
    )
