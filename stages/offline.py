"""Stage `dpo`, `kto`, `orpo`, `simpo`: offline preference optimisation from the SFT model.

The methods that learn straight from the preference pairs, each with its TRL trainer (see
alignpipe.core.registry): DPO (DPOTrainer), KTO (KTOTrainer; TRL unpairs the pairs into
desirable/undesirable answers), ORPO (ORPOTrainer, no reference model) and SimPO (TRL's
CPOTrainer with `loss_type: simpo`, reference-free). For DPO and KTO the reference is the SFT
model itself (with LoRA, the policy with its adapter disabled). By default (`precompute_ref_log_probs`,
see alignpipe.core.registry) its log-probs are computed once before training and kept as a
content-addressed artifact under the cache dir (alignpipe.training.reference): a re-run, or
another DPO variant on the same pairs, reads them and runs no reference at all; no reference
copy is held either way. With `precompute_ref_log_probs: false` TRL keeps a reference copy. Pairs are
formatted with the template the SFT stage trained with. Logs TRL's rewards/accuracies and
margins, on the train steps and on held-out validation pairs. Pairs come from
`data.training_rows` (any preference format, mixture, policy, dedup, decontamination against the
eval sets including the eval pairs); its report is logged to the run.
"""

from __future__ import annotations

import dataclasses

from alignpipe import data, tracking, training
from alignpipe.core import trl_api
from alignpipe.core.config import PipelineConfig
from alignpipe.core.registry import METHODS
from alignpipe.core.result import StageResult
from alignpipe.training import models, reference


def run_offline(cfg: PipelineConfig, sft: str, template: str | None = None) -> StageResult:
    """Train `preference.method` (dpo | kto | orpo | simpo) on the pairs, from the `sft` model."""
    method = METHODS[cfg.preference.method]
    template = template or cfg.sft.template
    rows = data.training_rows(cfg, "preference")
    section = {"preference": dataclasses.asdict(cfg.preference), "sft_model": sft, "template": template}
    lineage = {"reference_model": sft} if method.has_reference else {}
    with tracking.open_stage(cfg, method.name, section, data_report=(rows.report, "preference")) as stage:
        tok = models.load_tokenizer(sft, cfg.model)
        defaults = reference.precompute_default(method.defaults, cfg.preference.trl, method.name)
        ours = {**training.common_args(cfg), **defaults, **method.locked}
        # The trainer config first: under ZeRO-3 the model is partitioned as it loads.
        args = trl_api.make_config(method.trl_kind, str(stage.out / "checkpoints"), cfg.preference.trl, ours=ours)
        ref_cache = (
            reference.cache_for(models.cache_dir(cfg), method.trl_kind, sft, args, cfg.model.dtype)
            if method.has_reference
            else None
        )
        trainer = trl_api.trainer(
            method.trl_kind,
            ref_logps_cache=ref_cache,
            # No ref_model: with precompute_ref_log_probs TRL holds none, else it copies the SFT weights (dpo, kto).
            model=models.load_model(sft, cfg.model),
            args=args,
            train_dataset=training.pair_dataset(rows.train, template, cfg.formats.variation, cfg.seed),
            eval_dataset=training.pair_dataset(rows.validation, template) if rows.validation else None,
            processing_class=tok,
            peft_config=training.lora_config(cfg.preference.lora),
            callbacks=[tracking.MetricsCallback()],
        )
        tracking.log_params(
            {
                "train_pairs": len(rows.train),
                "validation_pairs": len(rows.validation),
                "data_digest": rows.digest,
                "sft_model": sft,
                **lineage,
            }
        )
        tracking.log_model_input(sft, "reference" if lineage else "policy")  # the initial policy (and reference)
        ref_logps = ref_cache.used if ref_cache else {}
        for split, used in ref_logps.items():  # the reference log-probs it read or wrote
            tracking.log_params({f"ref_logps_{split}_key": used["key"], f"ref_logps_{split}_reused": used["reused"]})
            tracking.log_dataset(used["path"], f"reference_logps_{split}", digest=used["key"], rows=used["rows"])
        metrics, model_dir = training.fit(trainer, tok, stage.out, method.name)
        return stage.finish(
            metrics,
            model_path=str(model_dir),
            template=template,
            lineage=lineage,
            details={"data_digest": rows.digest, **({"ref_logps": ref_logps} if ref_logps else {})},
        )
