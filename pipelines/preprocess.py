"""Step: read a pinned Delta version with Ray Data, split, fit the feature pipeline, transform.

python -m pipelines.preprocess [--version N] [--json]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--version", type=int, help="table version to read (default: latest, pinned once)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters import ray_cluster
    from pipelines.training.data import prepare

    with ray_cluster.ray_session(config):
        prepared = prepare(config, args.table, args.version)
        counts = {name: ds.count() for name, ds in prepared.splits.items()}
    lineage = prepared.lineage
    data = {"lineage": asdict(lineage), "feature_dim": prepared.pipeline.width, "transformed_rows": counts}
    summary = (
        f"preprocessed {lineage.describe()}: "
        + ", ".join(f"{n} {c} rows" for n, c in lineage.rows.items())
        + f"; {prepared.pipeline.width} encoded features per row ({prepared.pipeline.onehot_width} one-hot)"
    )
    return StepResult(summary, data)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.preprocess", add_arguments, run, argv)


if __name__ == "__main__":
    main()
