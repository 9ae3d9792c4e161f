"""Step: compact, checkpoint and vacuum the tables the loop appends to.

    lakeloop data maintain                      # predictions, feedback, labelled_feedback, drift_reports
    lakeloop data maintain --table events       # any other table under storage.root, or a path/URI
    python -m pipelines.maintain --json

Compaction rewrites the many small files of frequent appends into few large ones (a commit that
changes no data); a checkpoint lets readers skip replaying the log; vacuum deletes the files removed
more than maintenance.retention_hours ago. Versions a registered model's lineage pins stay readable
(--unpin drops that guarantee), and so do the commits the monitor has not read yet. The monitor loop
runs this every maintenance.every_s.
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import ConfigError
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--table", action="append", help="a table to maintain, repeatable (default: maintenance.tables, or the logs)"
    )
    parser.add_argument(
        "--retention-hours", type=int, help="vacuum files removed longer ago (default: maintenance.retention_hours)"
    )
    parser.add_argument(
        "--unpin", action="store_true", help="also vacuum versions registered models' lineage pins (default: keep)"
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.monitoring.upkeep import describe, maintain

    if args.retention_hours is not None:
        if args.retention_hours < 0:
            raise ConfigError(f"--retention-hours must be 0 or more, not {args.retention_hours}")
        config = config.model_copy(
            update={"maintenance": config.maintenance.model_copy(update={"retention_hours": args.retention_hours})}
        )
    outcomes = maintain(config, args.table, keep_pinned=not args.unpin)
    return StepResult(describe(outcomes), {"tables": outcomes})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.maintain", add_arguments, run, argv)


if __name__ == "__main__":
    main()
