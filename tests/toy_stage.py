"""A toy stage for tests/test_graph.py: what adding a stage takes (this module and one registry entry)."""

from pathlib import Path

from alignpipe import tracking
from alignpipe.core.config import PipelineConfig
from alignpipe.core.result import StageResult


def run_toy(cfg: PipelineConfig, model: str) -> StageResult:
    """Count the files of the SFT model."""
    with tracking.open_stage(cfg, "toy", {"model": model}) as stage:
        files = sum(1 for p in Path(model).rglob("*") if p.is_file())
        return stage.finish({"files": files}, lineage={"counted_model": model})
