"""Training: loading and building models (`models`), launching multi-rank jobs (`launch`), and what
every training stage shares (`fit`, `integrity`). The names stages use are re-exported here:
`from alignpipe import training; training.fit(trainer, tok, out, "sft")`."""

from alignpipe.training.fit import (
    common_args,
    fit,
    last_checkpoint,
    lora_config,
    pair_dataset,
    save_final,
    save_model,
    sft_dataset,
    train_sft,
)
from alignpipe.training.integrity import IntegrityError, check_integrity

__all__ = [
    "IntegrityError",
    "check_integrity",
    "common_args",
    "fit",
    "last_checkpoint",
    "lora_config",
    "pair_dataset",
    "save_final",
    "save_model",
    "sft_dataset",
    "train_sft",
]
