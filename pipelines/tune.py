"""Step: train with a hyperparameter search first (the same as `lakeloop train --tune`).

python -m pipelines.tune [--json]
ray job submit --working-dir . -- python -m pipelines.tune --json
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--version", type=int, help="table version to train on (default: latest, pinned once)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.training import search
    from pipelines.training.workflow import train_and_register

    outcome = train_and_register(config, search.search, "tune", table=args.table, version=args.version)
    return StepResult(outcome.summary(config), asdict(outcome))


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.tune", add_arguments, run, argv)


if __name__ == "__main__":
    main()
