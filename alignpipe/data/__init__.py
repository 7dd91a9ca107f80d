"""Data: reading files as users bring them (`read`), their formats (`formats`), a stage's rows
under the data policy (`mixture`), decontamination, prompt templates and the demo data. The names
stages use are re-exported here: `from alignpipe import data; data.stage_rows(cfg, "sft")`."""

from alignpipe.data.formats import FORMATS, SourceReport, detect_format, load, load_source, normalise
from alignpipe.data.mixture import (
    TrainingRows,
    clean_generated,
    drop_duplicates,
    eval_rows,
    eval_sets,
    mix,
    row_key,
    rows_digest,
    seen_categories,
    sources,
    split_validation,
    stage_rows,
    training_rows,
)
from alignpipe.data.read import DataError, RowProblem, read_table

__all__ = [
    "FORMATS",
    "DataError",
    "RowProblem",
    "SourceReport",
    "TrainingRows",
    "clean_generated",
    "detect_format",
    "drop_duplicates",
    "eval_rows",
    "eval_sets",
    "load",
    "load_source",
    "mix",
    "row_key",
    "normalise",
    "read_table",
    "rows_digest",
    "seen_categories",
    "sources",
    "split_validation",
    "stage_rows",
    "training_rows",
]
