"""alignpipe: a retrainable, auditable alignment pipeline (TRL, DeepSpeed, Prefect, MLflow): select -> sft ->
preference method (dpo, ppo, kto, orpo, simpo, rloo, grpo, ...: `alignpipe.core.registry.METHODS`) -> evaluate ->
gate -> compare, with optional self_instruct and distillation."""

import logging

# bitsandbytes warns at import on CPUs with AVX512-BF16 that an optional kernel package is absent;
# its own fallback is used and nothing is wrong.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
