"""Checking a Delta table against the dataset config, before any Ray work: the rules are pure
(pipelines.core.table_checks); this reads the pinned version and streams its column statistics."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import ValidationFailed
from pipelines.core.table_checks import check_table, collect_stats, schema_fingerprint


@dataclass(frozen=True)
class ValidationReport:
    table_uri: str
    version: int
    rows: int
    fingerprint: str


def validate_table(config: LakeloopConfig, name: str | None = None, version: int | None = None) -> ValidationReport:
    """The dataset table, or `name` (a table under storage.root, or a path/URI), at `version` (default:
    the latest); raise ValidationFailed listing every problem (one line each, naming the column)."""
    source = delta.tables(config).source(name)
    uri = source.uri
    table = source.open(version)
    pinned = table.version()
    where = f"{uri} (version {pinned})"
    unsupported = delta.unsupported_features(table)
    if unsupported:
        raise ValidationFailed(
            [f"{where}: table uses {name}, which lakeloop's readers do not support" for name in unsupported]
        )
    data = delta.arrow_dataset(table)
    stats = collect_stats(data, config.dataset)
    problems = check_table(data.schema, stats, config.dataset)
    if problems:
        raise ValidationFailed([f"{where}: {p}" for p in problems])
    return ValidationReport(uri, pinned, stats.rows, schema_fingerprint(data.schema, config.dataset.required_columns))
