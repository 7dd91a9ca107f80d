"""The one place that imports TRL's trainers and configs (their API moves between releases).

trl is pinned to 1.12.0 on purpose: the last release that ships PPO (removed after 1.12); PPO
itself is imported only in `alignpipe.core.ppo_api`. Which method uses which trainer kind is
declared in `alignpipe.core.registry`. ORPO, CPO (SimPO) and GKD live in
`trl.experimental` in 1.12: those imports are here too, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import importlib
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

import torch

from alignpipe.core import ppo_api, progress
from alignpipe.core.files import env_override

# trl.experimental is used knowingly (pinned trl==1.12.0): no warning on every import.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


# kind -> (module, config class, trainer class). ORPO and CPO are experimental in trl 1.12;
# PPO is imported only by alignpipe.core.ppo_api.
_TRL = {
    "sft": ("trl", "SFTConfig", "SFTTrainer"),
    "dpo": ("trl", "DPOConfig", "DPOTrainer"),
    "reward": ("trl", "RewardConfig", "RewardTrainer"),
    "kto": ("trl", "KTOConfig", "KTOTrainer"),
    "orpo": ("trl.experimental.orpo", "ORPOConfig", "ORPOTrainer"),
    "cpo": ("trl.experimental.cpo", "CPOConfig", "CPOTrainer"),
    "rloo": ("trl", "RLOOConfig", "RLOOTrainer"),
    "grpo": ("trl", "GRPOConfig", "GRPOTrainer"),
    "distill": ("trl", "DistillationConfig", "DistillationTrainer"),
    "gkd": ("trl.experimental.gkd", "GKDConfig", "GKDTrainer"),
}


def _classes(kind: str) -> tuple[type, type]:
    if kind == "ppo":
        return ppo_api.classes()
    if kind not in _TRL:
        raise ValueError(f"unknown TRL method {kind!r}")
    module, config, trainer = _TRL[kind]
    loaded = importlib.import_module(module)
    return getattr(loaded, config), getattr(loaded, trainer)


@functools.cache
def config_fields(kind: str) -> set[str]:
    """Names a user may set in the section of this method (TRL's own config fields)."""
    cls, _ = _classes(kind)
    return {f.name for f in dataclasses.fields(cls) if f.init} - {"output_dir"}


def defaults_for_this_machine() -> dict[str, Any]:
    """TRL configs default to bf16 and gradient checkpointing: wrong on a CPU, slow on tiny models."""
    on_gpu = torch.cuda.is_available()
    return {
        "bf16": on_gpu and torch.cuda.is_bf16_supported(),
        "activation_checkpointing": False,
        "use_cpu": not on_gpu,
        "report_to": "none",
        "save_only_model": False,
    }


def make_config(kind: str, output_dir: str, user: dict[str, Any], ours: dict[str, Any] | None = None):
    """TRL config = machine defaults <- our stage's values <- the user's pass-through fields."""
    cls, _ = _classes(kind)
    values = {**defaults_for_this_machine(), **(ours or {}), **user}
    return cls(output_dir=output_dir, **values)


# Fields TrainingArguments.to_dict masks as `<NAME>` (it masks every `*_token`) that hold no secret.
_NOT_SECRET = ("eos_token", "pad_token", "stop_token")


def config_values(args) -> dict[str, Any]:
    """A trainer's arguments as JSON: TRL's `to_dict()` (enums as their values, the hub token masked),
    with eos/pad/stop tokens as set; anything else JSON cannot hold as its str."""
    values = {**args.to_dict(), **{k: getattr(args, k) for k in _NOT_SECRET if hasattr(args, k)}}
    return _json(values)


def changed_values(args, values: dict[str, Any]) -> dict[str, Any]:
    """The fields of `values` (`config_values(args)`) that differ from what args' config class declares:
    set by the recipe or the stage, or filled in by the config's own __post_init__ (SFT's loss_type, ...).

    The declared defaults come from the dataclass fields, not from an instance: a TRL config built
    with its defaults raises on a CPU (bf16). Not differences: what __post_init__ merely spells
    another way (report_to "none" -> [], debug "" -> [], accelerator_config None -> its class's
    defaults); left out: masked secrets (`<HUB_TOKEN>`)."""
    out = {}
    for f in dataclasses.fields(args):
        if not f.init or f.name not in values or values[f.name] == f"<{f.name.upper()}>":
            continue
        default, value = _declared(f), getattr(args, f.name)
        if default is None and dataclasses.is_dataclass(value) and value == type(value)():
            continue  # filled in with its own class's defaults
        default = _json(default)
        if values[f.name] != default and not (_unset(values[f.name]) and _unset(default)):
            out[f.name] = values[f.name]
    return out


def _declared(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING  # required: whatever it holds differs


def _unset(value: Any) -> bool:
    return value is None or value in ("", "none") or value == [] or value == {}


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: o.value if isinstance(o, enum.Enum) else str(o)))


def check_config(kind: str, user: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, problem) for the user's pass-through fields: declared types, then the real TRL config."""
    cls, _ = _classes(kind)
    hints = typing.get_type_hints(cls)
    problems = [
        (k, f"must be {_expected(hints[k])}, got {v!r}") for k, v in user.items() if not _fits(hints.get(k), v)
    ]
    typed = {k: v for k, v in user.items() if _fits(hints.get(k), v)}
    if not typed or _rejection(kind, typed) is None:
        return problems
    found = [
        (k, f"TRL {cls.__name__} rejects {typed[k]!r}: {why}")
        for k in sorted(typed)
        if (why := _rejection(kind, {k: typed[k]}))
    ]
    return problems + (
        found
        or [(", ".join(sorted(typed)), f"TRL {cls.__name__} rejects this combination: {_rejection(kind, typed)}")]
    )


_RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _rejection(kind: str, fields: dict[str, Any]) -> str | None:
    # A trial config inside a launched rank must not set up torch.distributed: hide the rank env.
    hidden = {k: os.environ.pop(k) for k in _RANK_ENV if k in os.environ}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            make_config(kind, tmp, fields)
    except (TypeError, ValueError) as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    finally:
        os.environ.update(hidden)
    return None


_SIMPLE = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _fits(tp: Any, value: Any) -> bool:
    """Whether a YAML value fits a TRL field's declared type (only simple types are checked)."""
    if tp is None:
        return True
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args) or (value is None and type(None) in args)
    if tp in _SIMPLE:
        return isinstance(value, _SIMPLE[tp]) and (tp is bool or not isinstance(value, bool))
    return True  # lists, enums, dicts: TRL's own validation decides


def _expected(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    return " or ".join(names.get(a, getattr(a, "__name__", str(a))) for a in args)


# Per method family: the TRL config fields that change a tokenized row's reference log-prob (the
# collator's truncation, DPO's LD-DPO weighting, precision). Not beta, loss_type or the schedule.
_REF_LOGPS_FIELDS = {
    "dpo": ("max_length", "truncation_mode", "ld_alpha", "bf16", "fp16"),
    "kto": ("max_length", "bf16", "fp16"),
}
# Fields with which TRL refuses `precompute_ref_log_probs` (DPOTrainer/KTOTrainer.__init__).
PRECOMPUTE_CONFLICTS = ("use_liger_kernel", "sync_ref_model")


def ref_logps_settings(kind: str, args) -> dict[str, Any]:
    """What besides the SFT weights and the tokens decides a row's reference log-prob under `args`."""
    from importlib.metadata import version

    return {"trl": version("trl"), **{f: getattr(args, f) for f in _REF_LOGPS_FIELDS[kind]}}


def trainer(kind: str, ref_logps_cache=None, **kwargs):
    """TRL's trainer of `kind`. For dpo and kto with precompute_ref_log_probs, each split's reference
    log-probs are read from `ref_logps_cache` when it has them (no reference pass at all), else
    computed by TRL and saved to it (`alignpipe.training.reference.RefLogpsCache`; None: not cached).
    For sft with packing and without flash-attention, packed rows are kept apart (below)."""
    _, cls = _classes(kind)
    if kind in _REF_LOGPS_FIELDS and kwargs["args"].precompute_ref_log_probs:
        return _precomputing(cls)(ref_logps_cache=ref_logps_cache, **kwargs)
    if ref_logps_cache is not None:
        raise ValueError(f"a reference log-prob cache needs dpo or kto with precompute_ref_log_probs, not {kind}")
    made = cls(**kwargs)
    if kind == "sft" and made.args.packing and made.padding_free and not _flash_attention(made.model):
        _keep_packed_rows_apart(made)
    return made


def _flash_attention(model) -> bool:
    from trl.trainer.sft_trainer import FLASH_ATTENTION_VARIANTS

    return model.config._attn_implementation in FLASH_ATTENTION_VARIANTS


def _keep_packed_rows_apart(sft_trainer) -> None:
    """Packed SFT batches as rows of at most max_length tokens, not TRL's one flattened row.

    TRL's packing flattens a batch of B packed rows into one B x max_length sequence: right for
    flash-attention's varlen kernels, but SDPA and eager attention then build (and compute) one
    (B x L)^2 mask. Kept apart, each row gets its own block-diagonal mask from its position_ids
    (transformers detects the restarts), so attention costs B x L^2 and no example sees another."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    flat = sft_trainer.data_collator
    if type(flat) is not DataCollatorForLanguageModeling:  # a collator of the user's: leave it alone
        return
    sft_trainer.data_collator = PackedRowsCollator(
        pad_token_id=flat.pad_token_id, padding_free=True, pad_to_multiple_of=flat.pad_to_multiple_of
    )
    count = sft_trainer.compute_loss

    def compute_loss(model, inputs, *args, **kwargs):
        counted = sft_trainer._total_train_tokens
        result = count(model, inputs, *args, **kwargs)
        if sft_trainer._total_train_tokens != counted:  # a train step: TRL counted one row's width per rank
            real = torch.tensor(real_tokens(inputs, flat.pad_token_id), device=inputs["input_ids"].device)
            sft_trainer._total_train_tokens = counted + sft_trainer.accelerator.gather_for_metrics(real).sum().item()
            sft_trainer._metrics["train"]["num_tokens"] = [sft_trainer._total_train_tokens]  # what TRL logs
        return result

    sft_trainer.compute_loss = compute_loss


def real_tokens(batch: dict, pad_token_id: int) -> int:
    """Tokens of a packed-rows batch that are not the pad tail of a row shorter than the batch."""
    pads = 0
    for ids, positions in zip(batch["input_ids"], batch["position_ids"]):
        tail = int(len(positions) - (positions == 0).nonzero()[-1])  # the row's last block
        if bool((ids[-tail:] == pad_token_id).all()):
            pads += tail
    return batch["input_ids"].numel() - pads


class PackedRowsCollator:
    """TRL's padding-free collator applied to each packed row alone; the rows are then padded to the
    batch's longest. A pad tail is its own block (positions restart at 0; labels -100), so every
    real token attends only within its own example."""

    def __init__(self, **flat_kwargs):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self.row = DataCollatorForLanguageModeling(**flat_kwargs)
        self.pad_token_id = self.row.pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        rows = [self.row([example]) for example in examples]  # each: input_ids, labels, position_ids of [1, n]
        width = max(r["input_ids"].shape[1] for r in rows)
        fill = {"input_ids": self.pad_token_id, "labels": -100}
        out = {key: [] for key in ("input_ids", "labels", "position_ids")}
        for r in rows:
            tail = width - r["input_ids"].shape[1]
            for key in out:
                pad = torch.arange(tail) if key == "position_ids" else torch.full((tail,), fill[key])
                out[key].append(torch.cat([r[key][0], pad.to(r[key].dtype)]))
        return {key: torch.stack(values) for key, values in out.items()}


@functools.cache
def _precomputing(cls: type) -> type:
    """`cls` whose `_precompute_ref_logps(dataset, name, batch_size)` (trl 1.12: DPOTrainer and
    KTOTrainer, from __init__ and evaluate; it returns the tokenized dataset plus the reference
    columns, which the loss reads from each batch) goes through the cache, and works on several ranks.
    A pass it computes reports its batches through alignpipe.core.progress instead of TRL's tqdm bar."""
    from accelerate.utils import gather_object
    from datasets import concatenate_datasets

    class Precomputing(cls):
        _ref_progress: progress.Progress | None = None  # the reference pass in progress

        def __init__(self, *args, ref_logps_cache, **kwargs):
            self.ref_logps_cache = ref_logps_cache  # before super(): its __init__ precomputes
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            store = self.ref_logps_cache
            if store is not None:
                self._set_signature_columns_if_needed()
                reference = ("ref_chosen_logps", "ref_rejected_logps", "ref_logps", "ref_KL_logps")
                inputs = dataset.select_columns(
                    [c for c in self._signature_columns if c in dataset.column_names and c not in reference]
                )
                found = store.load(name, inputs)
                # Every rank must take the same branch (computing gathers across ranks): reuse only if all have it.
                if all(gather_object([found is not None])):
                    return concatenate_datasets([dataset, found], axis=1)
            if not dataset.cache_files and self.accelerator.num_processes > 1:
                # trl 1.12 hands the values from rank 0 to the others through dataset._get_cache_file_path,
                # which for an in-memory dataset (ours) is a random file in a per-process temp dir: the other
                # ranks would not find it. A path named by TRL's broadcast fingerprint, in the shared output dir.
                shared = Path(self.args.output_dir) / "ref_logps_tmp"
                shared.mkdir(parents=True, exist_ok=True)
                dataset._get_cache_file_path = lambda fingerprint: str(shared / f"cache-{fingerprint}.arrow")
            batches = math.ceil(len(dataset) / (batch_size * self.accelerator.num_processes))
            label = f"reference log-probs for {name}: computing {len(dataset)} rows (batch {batch_size})"
            self._ref_progress = progress.Progress(label, batches, "batches")
            try:
                with self._ref_progress, env_override({"TQDM_DISABLE": "1"}):
                    out = super()._precompute_ref_logps(dataset, name, batch_size)
            finally:
                self._ref_progress = None
            if store is not None and self.accelerator.is_main_process:
                store.save(
                    name, inputs, out.select_columns([c for c in out.column_names if c not in dataset.column_names])
                )
            return out

        def compute_ref_log_probs(self, model, inputs):
            out = super().compute_ref_log_probs(model, inputs)
            if self._ref_progress is not None:
                self._ref_progress.advance()
            return out

    Precomputing.__name__ = Precomputing.__qualname__ = cls.__name__
    return Precomputing


def config_class_name(kind: str) -> str:
    return _classes(kind)[0].__name__
