"""Step: build a point-in-time correct training set from label events and feature views, or
materialize the views' latest values to the online store the replicas look them up in.

    lakeloop features build                   # features.labels joined with features.views -> dataset.table
    lakeloop features materialize             # each view's latest value per entity -> features.online
    lakeloop features build --json
    ray job submit --working-dir . -- python -m pipelines.features build

For every label event and view, the latest feature row of its entity whose event time and created
time are at or before the event's time, within the view's TTL (otherwise missing, imputed as any
missing value); joined on the cluster, bucketed by entity key. Every source table is read at one
pinned version; the training set replaces dataset.table as a new Delta version, and
features.builds_table records it with its sources' versions: `lakeloop train` on it logs them.

`materialize` applies the same rule at one moment (now) to every entity of every view, and writes the
result as one new online version per view (a Delta table, or Redis): replicas follow it within
features.online.refresh_interval_s. Run it on a schedule (and after each change of a view's table).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from datetime import datetime

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, iso_moment, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=["build", "materialize"],
        help="build: write the training set to dataset.table; materialize: the latest values to the online store",
    )
    parser.add_argument(
        "--as-of",
        type=iso_moment,
        help="materialize: the values a label event at this ISO moment would see (default: now)",
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    if args.action == "materialize":
        return _materialize(config, getattr(args, "as_of", None))
    from pipelines.adapters import ray_cluster
    from pipelines.feature_tables.build import build_training_set

    with ray_cluster.ray_session(config):
        built = build_training_set(config)
    return StepResult(built.describe(), asdict(built))


def _materialize(config: LakeloopConfig, as_of: datetime | None) -> StepResult:
    from pipelines.feature_tables.materialize import materialize

    written = materialize(config, as_of)
    lines = [
        f"view {m.view}: {m.entities} entities as of {m.as_of} -> {m.store} version {m.version} "
        f"(from its table's version {m.source_version})"
        for m in written
    ]
    return StepResult("\n".join(lines), {"views": [asdict(m) for m in written]})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.features", add_arguments, run, argv)


if __name__ == "__main__":
    main()
