"""The integrity check of a saved model: complete, well-shaped, reloadable, and it generates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM
from transformers.integrations import deepspeed as hf_ds


class IntegrityError(RuntimeError):
    """A saved model that is incomplete, mis-shaped or unusable."""


def check_integrity(model_dir: Path, config, tokenizer) -> dict[str, Any]:
    """Check a saved model against the config it was trained with; IntegrityError if it fails.

    Same tensor names and shapes as the architecture implies (tied weights may be stored once),
    no empty tensor (the classic ZeRO-3 save failure), reloads with from_pretrained, generates."""
    zero3, hf_ds._hf_deepspeed_config_weak_ref = (
        hf_ds._hf_deepspeed_config_weak_ref,
        None,
    )  # build/load plainly, not via zero.Init
    try:
        return _check_integrity(model_dir, config, tokenizer)
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = zero3


def _check_integrity(model_dir: Path, config, tokenizer) -> dict[str, Any]:
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
    problems += [
        f"{k}: shape {saved[k]} != expected {expected[k]}" for k in saved if k in expected and saved[k] != expected[k]
    ]
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
            gen = model.generate(
                **ids,
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        new = gen[0, ids["input_ids"].shape[1] :]
        report["generated_tokens"] = int(new.numel())
        report["ends_with_eos"] = bool(new.numel() and int(new[-1]) == tokenizer.eos_token_id)
        report["generated"] = tokenizer.decode(new, skip_special_tokens=True)
        if new.numel() == 0:
            problems.append("generated nothing")
    if problems:
        raise IntegrityError(f"{model_dir}: saved model failed the integrity check: " + "; ".join(problems))
    return report
