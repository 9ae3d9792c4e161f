"""Step: append a version of synthetic churn data (optionally drifted) to a Delta table.

    python -m pipelines.generate --rows 5000 --seed 1 --drift covariate
"""

from __future__ import annotations

import argparse
from datetime import timedelta

import pyarrow.compute as pc

from pipelines import delta_tables, synthetic
from pipelines.config import LakeloopConfig
from pipelines.errors import LakeloopError
from pipelines.steps import StepResult, step_main


def _next_start(uri: str, storage_options: dict[str, str]):
    """New rows continue after the newest event already in the table."""
    if not delta_tables.table_exists(uri, storage_options):
        return synthetic.DEFAULT_START
    table = delta_tables.open_table(uri, storage_options)
    newest = pc.max(delta_tables.arrow_dataset(table).to_table(columns=["event_time"]).column("event_time")).as_py()
    return synthetic.DEFAULT_START if newest is None else newest + timedelta(seconds=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--rows", type=int, default=5000, help="rows to append (default: 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed, same rows")
    parser.add_argument("--drift", choices=synthetic.DRIFTS, default="none", help="drift scenario (default: none)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    if args.rows < 1:
        raise LakeloopError(f"--rows must be at least 1, got {args.rows}")
    uri = config.source_table(args.table)
    options = config.storage.storage_options
    data = synthetic.generate(args.rows, args.seed, args.drift, _next_start(uri, options))
    version = delta_tables.append(uri, data, options)
    positives = pc.mean(data.column("churned")).as_py()
    return StepResult(
        f"appended {data.num_rows} rows (drift: {args.drift}, seed {args.seed}, churn rate {positives:.1%}) "
        f"to {uri} as version {version}",
        {"table_uri": uri, "version": version, "rows": data.num_rows, "drift": args.drift, "seed": args.seed},
    )


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.generate", add_arguments, run, argv)


if __name__ == "__main__":
    main()
