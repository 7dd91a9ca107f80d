"""Serve the deployments `pipeline/full` and `pipeline/sft-only` (started by `alignpipe up`).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m alignpipe.flows.serve

Both take the flow's parameters (`config`, `overrides`); their default recipe is
$ALIGNPIPE_SERVE_CONFIG (default configs/tiny.yaml). `full` retrains on a cron schedule when
$ALIGNPIPE_RETRAIN_CRON or the recipe's `orchestration.retrain_cron` is set (off by default)."""

from __future__ import annotations

import os

from prefect import serve

from alignpipe.core.recipe import load_config
from alignpipe.flows.pipeline import pipeline


def deployments(config: str, cron: str | None = None) -> list:
    cron = cron or load_config(config).orchestration.retrain_cron
    full = pipeline.to_deployment(
        name="full",
        parameters={"config": config, "overrides": [], "preference": True},
        cron=cron,
        description="select -> SFT -> DPO -> evaluate base, SFT-only and DPO -> gate",
    )
    sft_only = pipeline.to_deployment(
        name="sft-only",
        parameters={"config": config, "overrides": [], "preference": False},
        description="select -> SFT -> evaluate base and SFT-only -> gate",
    )
    return [full, sft_only]


def main() -> None:
    config = os.environ.get("ALIGNPIPE_SERVE_CONFIG", "configs/tiny.yaml")
    serve(*deployments(config, os.environ.get("ALIGNPIPE_RETRAIN_CRON") or None))


if __name__ == "__main__":
    main()
