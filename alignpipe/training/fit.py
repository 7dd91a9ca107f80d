"""What the training stages share: trainer arguments, LoRA, resuming, training, saving the final model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from datasets import Dataset

from alignpipe import tracking
from alignpipe.core import trl_api
from alignpipe.core.config import LoraSection, PipelineConfig
from alignpipe.core.deepspeed_api import separate_master_bytes
from alignpipe.core.files import atomic_dir
from alignpipe.data import templates
from alignpipe.training.integrity import check_integrity
from alignpipe.training.launch import deepspeed_args, in_rank, rank
from alignpipe.training.models import ModelSourceError, load_model, load_tokenizer


def common_args(cfg: PipelineConfig) -> dict[str, Any]:
    """Trainer arguments every training stage sets; the user's section overrides them.

    Inside a launched rank with a DeepSpeed config, the trainer gets it (`deepspeed_args`)."""
    args = {
        "seed": cfg.seed,
        "save_strategy": "steps",
        "save_total_limit": 2,
        "eval_strategy": "no",
        "report_to": cfg.tracking.report_to or "none",
    }
    if cfg.distributed.deepspeed and in_rank():
        args.update(deepspeed_args(cfg))
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
        layers_to_transform=section.layers_to_transform,
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
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def zero3_partition(model) -> tuple[int, int] | None:
    """(parameters this rank holds, parameters in the model) when ZeRO-3 partitioned it as it loaded."""
    params = list(model.parameters())
    if not params or not all(hasattr(p, "ds_tensor") for p in params):
        return None
    return sum(p.ds_tensor.numel() for p in params), sum(p.ds_numel for p in params)


def fit(trainer, tokenizer, out: Path, stage: str) -> tuple[dict[str, float], Path]:
    """Train (resuming from the newest checkpoint in `out`), evaluate, log, save the final model.

    Returns the final metrics and the saved model dir. Runs inside the stage's MLflow run.
    """
    held = zero3_partition(trainer.model)
    if held:
        print(f"{stage}: ZeRO-3 rank {rank()}: holds {held[0]:,} of {held[1]:,} parameters")
    resume = last_checkpoint(out / "checkpoints")
    if resume:
        print(f"{stage}: resuming from {resume}")
        tracking.set_tag("alignpipe.resumed_from", resume)
    output = trainer.train(resume_from_checkpoint=resume)
    if held:
        master = separate_master_bytes(trainer.optimizer)
        if master is not None:
            mib = master / 2**20
            print(f"{stage}: ZeRO-3 rank {rank()}: fp32 master weights apart from the model's: {mib:.0f} MiB")
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


def train_sft(
    cfg: PipelineConfig,
    stage: str,
    out: Path,
    base: str,
    train: list[dict],
    validation: list[dict],
    template: str,
    trl: dict[str, Any],
    lora: LoraSection | None,
) -> tuple[dict[str, float], Path]:
    """Supervised training of `base` on prompt/completion rows (loss on the completion only):
    the SFT stage, and the `sequence` mode of distillation. Returns fit's (metrics, model dir)."""
    tok = load_tokenizer(base, cfg.model)
    if template == "chat" and not tok.chat_template:
        raise ModelSourceError(f"{base}: has no chat template; set sft.template=alpaca")
    # The trainer config first: under ZeRO-3 the model is partitioned as it loads.
    args = trl_api.make_config("sft", str(out / "checkpoints"), trl, ours=common_args(cfg))
    trainer = trl_api.trainer(
        "sft",
        model=load_model(base, cfg.model),
        args=args,
        train_dataset=sft_dataset(train, template, cfg.formats.variation, cfg.seed),
        eval_dataset=sft_dataset(validation, template) if validation else None,
        processing_class=tok,
        peft_config=lora_config(lora),
        callbacks=[tracking.MetricsCallback()],
    )
    return fit(trainer, tok, out, stage)


def sft_dataset(rows: list[dict], template: str, variation: float = 0.0, seed: int = 0) -> Dataset:
    """TRL prompt/completion rows; a `variation` share of them in a varied format."""
    return Dataset.from_list(
        [
            {
                "prompt": templates.training_prompt(
                    template, r["instruction"], r["input"], r["history"], templates.pick_variant(r, variation, seed)
                ),
                "completion": templates.training_completion(template, r["output"]),
            }
            for r in rows
        ]
    )


def pair_dataset(rows: list[dict], template: str, variation: float = 0.0, seed: int = 0):
    """Preference rows as TRL prompt/chosen/rejected rows under the SFT stage's template (a
    `variation` share of them under a varied template, as in SFT)."""
    return Dataset.from_list(
        [
            {
                "prompt": templates.training_prompt(
                    template,
                    r["instruction"],
                    r["input"],
                    r.get("history"),
                    templates.pick_variant(r, variation, seed),
                ),
                "chosen": templates.training_completion(template, r["chosen"]),
                "rejected": templates.training_completion(template, r["rejected"]),
            }
            for r in rows
        ]
    )
