"""Step: append a version of synthetic churn data (optionally drifted) to a Delta table.

python -m pipelines.generate --rows 5000 --seed 1 --drift covariate
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.scenarios import synthetic
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--rows", type=int, default=5000, help="rows to append (default: 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same rows")
    parser.add_argument("--drift", choices=synthetic.DRIFTS, default="none", help="drift scenario (default: none)")
    parser.add_argument(
        "--feature-tables",
        action="store_true",
        help="instead, append the rows as label_events plus the feature views customer_profile and daily_usage "
        "(README: Feature tables)",
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    if args.rows < 1:
        raise LakeloopError(f"--rows must be at least 1, got {args.rows}")
    if args.feature_tables:
        return _feature_tables(args, config)
    from pipelines.scenarios.demo_data import land_demo_rows

    landed = land_demo_rows(config, args.rows, args.seed, args.drift, args.table)
    return StepResult(
        f"appended {landed.rows} rows (drift: {args.drift}, seed {args.seed}, churn rate {landed.positive_rate:.1%}) "
        f"to {landed.uri} as version {landed.version}",
        {
            "table_uri": landed.uri,
            "version": landed.version,
            "rows": landed.rows,
            "drift": args.drift,
            "seed": args.seed,
        },
    )


def _feature_tables(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters import delta
    from pipelines.scenarios.feature_tables import TABLES, feature_tables

    if args.drift != "none" or args.table:
        raise LakeloopError("--feature-tables writes the three tables of the worked example: no --drift or --table")
    generated = feature_tables(args.rows, args.seed)
    versions = {
        name: delta.tables(config).named(name).append(getattr(generated, part)) for part, name in TABLES.items()
    }
    written = ", ".join(f"{name} version {version}" for name, version in versions.items())
    return StepResult(f"appended {args.rows} label events and their feature rows: {written}", {"versions": versions})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.generate", add_arguments, run, argv)


if __name__ == "__main__":
    main()
