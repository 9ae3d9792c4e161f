"""Step: build a point-in-time correct training set from label events and feature views.

    lakeloop features build                   # features.labels joined with features.views -> dataset.table
    lakeloop features build --json
    ray job submit --working-dir . -- python -m pipelines.features build

For every label event and view, the latest feature row of its entity whose event time and created
time are at or before the event's time, within the view's TTL (otherwise missing, imputed as any
missing value); joined on the cluster, bucketed by entity key. Every source table is read at one
pinned version; the training set replaces dataset.table as a new Delta version, and
features.builds_table records it with its sources' versions: `lakeloop train` on it logs them.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build"], help="build: write the training set to dataset.table")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters import ray_cluster
    from pipelines.feature_tables.build import build_training_set

    with ray_cluster.ray_session(config):
        built = build_training_set(config)
    return StepResult(built.describe(), asdict(built))


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.features", add_arguments, run, argv)


if __name__ == "__main__":
    main()
