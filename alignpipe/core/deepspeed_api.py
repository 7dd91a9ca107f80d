"""The one place that reaches into DeepSpeed's internals (they move between releases).

`alias_fp32_master_weights`: ZeRO-3 keeps no separate fp32 master copy of a partition whose
weights are already fp32 on the optimizer's device (DeepSpeed's own branch for fp32 training),
but it tests that with `tensor.device == self.device`, where `self.device` is a string ('cpu',
'cuda:0'): a torch.device never equals a string, so every rank kept a second fp32 copy of its
partition (420 MiB a rank on the 220M model of benchmarks/zero_memory.py). The patch makes that
one comparison between devices; nothing else changes (the optimizer then updates the partition
in place, as DeepSpeed intends for fp32 weights).
"""

from __future__ import annotations

import functools

import torch


def alias_fp32_master_weights() -> None:
    """Patch ZeRO-3's optimizer (once per process) so fp32 weights serve as their own master copy."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3 as Stage3

    create = Stage3._create_fp32_partitions
    if getattr(create, "_alignpipe_patched", False):
        return

    @functools.wraps(create)
    def create_fp32_partitions(self):
        device = self.device
        if isinstance(device, str):
            self.device = torch.device(device)
        try:
            return create(self)
        finally:
            self.device = device

    create_fp32_partitions._alignpipe_patched = True
    Stage3._create_fp32_partitions = create_fp32_partitions


def separate_master_bytes(optimizer) -> int | None:
    """Bytes of fp32 master weights a ZeRO-3 optimizer keeps apart from the model's own partition
    (0 with fp32 weights once `alias_fp32_master_weights` is in; the whole partition in bf16/fp16
    training, where the copy is the point); None if `optimizer` (or what it wraps) is not ZeRO-3's."""
    while optimizer is not None and not hasattr(optimizer, "fp32_partitioned_groups_flat"):
        optimizer = getattr(optimizer, "optimizer", None)
    if optimizer is None:
        return None
    model_storages = {t.untyped_storage().data_ptr() for t in optimizer.fp16_partitioned_groups_flat if t is not None}
    apart = {}
    for t in optimizer.fp32_partitioned_groups_flat:
        storage = t.untyped_storage()
        if storage.data_ptr() not in model_storages:
            apart[storage.data_ptr()] = storage.nbytes()
    return sum(apart.values())
