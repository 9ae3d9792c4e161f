"""Step: check a Delta table against the dataset config before any Ray work starts.

python -m pipelines.validate [--table PATH] [--version N] [--json]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--version", type=int, help="table version to check (default: latest)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.training.validation import validate_table

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
