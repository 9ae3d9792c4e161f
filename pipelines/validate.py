"""Step: check a Delta table against the dataset config before any Ray work starts.

    python -m pipelines.validate [--table PATH] [--version N] [--json]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass

from pipelines import delta_tables
from pipelines.config import LakeloopConfig
from pipelines.errors import ValidationFailed
from pipelines.steps import StepResult, step_main
from pipelines.table_checks import check_table, collect_stats, schema_fingerprint


@dataclass(frozen=True)
class ValidationReport:
    table_uri: str
    version: int
    rows: int
    fingerprint: str


def validate_table(config: LakeloopConfig, uri: str | None = None, version: int | None = None) -> ValidationReport:
    """Raise ValidationFailed listing every problem (one line each, naming the column)."""
    uri = config.source_table(uri)
    table = delta_tables.open_table(uri, config.storage.storage_options, version)
    pinned = table.version()
    where = f"{uri} (version {pinned})"
    unsupported = delta_tables.unsupported_features(table)
    if unsupported:
        raise ValidationFailed(
            [f"{where}: table uses {name}, which lakeloop's readers do not support" for name in unsupported]
        )
    data = delta_tables.arrow_dataset(table)
    stats = collect_stats(data, config.dataset)
    problems = check_table(data.schema, stats, config.dataset)
    if problems:
        raise ValidationFailed([f"{where}: {p}" for p in problems])
    return ValidationReport(uri, pinned, stats.rows, schema_fingerprint(data.schema, config.dataset.required_columns))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--version", type=int, help="table version to check (default: latest)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    report = validate_table(config, args.table, args.version)
    return StepResult(
        f"ok: {report.table_uri} version {report.version}: {report.rows} rows match the dataset config "
        f"(schema {report.fingerprint})",
        asdict(report),
    )


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.validate", add_arguments, run, argv)


if __name__ == "__main__":
    main()
