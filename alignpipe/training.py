"""Pieces the training stages share: where outputs go, LoRA, resuming, saving the final model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from alignpipe.config import LoraSection, PipelineConfig


def stage_dir(cfg: PipelineConfig, stage: str, inputs: dict[str, Any]) -> Path:
    """One folder per distinct set of inputs, so a checkpoint is only ever resumed by the same job."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]
    out = cfg.run_dir / f"{stage}-{digest}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "inputs.json").write_text(json.dumps(inputs, indent=2, sort_keys=True, default=str))
    return out


def common_args(cfg: PipelineConfig) -> dict[str, Any]:
    """Trainer arguments every training stage sets; the user's section overrides them."""
    return {
        "seed": cfg.seed,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "eval_strategy": "no",
        "report_to": cfg.tracking.report_to or "none",
    }


def last_checkpoint(folder: Path) -> str | None:
    """The newest complete `checkpoint-N` in the folder, to resume from after a crash."""
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not done:
        return None
    return str(max(done, key=lambda p: int(p.name.rsplit("-", 1)[1])))


def lora_config(section: LoraSection | None):
    if section is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=section.r,
        lora_alpha=section.alpha,
        lora_dropout=section.dropout,
        target_modules=section.target_modules,
        task_type="CAUSAL_LM",
    )


def save_final(trainer, tokenizer, out: Path) -> Path:
    """Save a plain, loadable model dir (LoRA adapters merged in), written only once complete."""
    model = trainer.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def fit(trainer, tokenizer, out: Path, stage: str) -> tuple[dict[str, float], Path]:
    """Train (resuming from the newest checkpoint in `out`), evaluate, log, save the final model.

    Returns the final metrics and the saved model dir. Runs inside the stage's MLflow run.
    """
    import mlflow

    resume = last_checkpoint(out / "checkpoints")
    if resume:
        print(f"{stage}: resuming from {resume}")
        mlflow.set_tag("alignpipe.resumed_from", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    metrics = {k: float(v) for k, v in output.metrics.items() if isinstance(v, (int, float))}
    metrics["global_step"] = float(trainer.state.global_step)
    if trainer.eval_dataset is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})
    mlflow.log_metrics({k.replace("/", "_"): v for k, v in metrics.items()})
    return metrics, save_final(trainer, tokenizer, out / "model")
