"""Step: validate, preprocess, train (or tune), evaluate against the champion, register, gate.

ray job submit --working-dir . -- python -m pipelines.train [--tune] [--json]
lakeloop train [--tune] [--table PATH] [--version N] [--json]
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipelines.core.config import LakeloopConfig
from pipelines.core.retraining_policy import TRIGGERS
from pipelines.step_runner import StepResult, iso_moment, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tune", action="store_true", help="search hyperparameters with Ray Tune (ASHA) first")
    parser.add_argument("--table", help="Delta table path or URI (default: dataset.table under storage.root)")
    parser.add_argument("--version", type=int, help="table version to train on (default: latest, pinned once)")
    parser.add_argument(
        "--regime-start",
        type=iso_moment,
        metavar="ISO-TIME",
        help="when drift began (the monitor passes it): rows since then split on their own (train.regime)",
    )
    parser.add_argument(
        "--trigger-id", metavar="ID", help="the monitor's submission id, recorded on the run and model version"
    )
    parser.add_argument(
        "--trigger",
        choices=TRIGGERS,
        default="manual",
        help="why this run trains, recorded on the model version: drift, retry, learn (the monitor), release, manual",
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.training import families, search
    from pipelines.training.workflow import train_and_register

    fitter, job = (search.search, "tune") if args.tune else (families.fit_configured, "train")
    outcome = train_and_register(
        config,
        fitter,
        job,
        table=args.table,
        version=args.version,
        regime_start=args.regime_start,
        trigger_id=args.trigger_id,
        trigger=args.trigger,
    )
    return StepResult(outcome.summary(config), asdict(outcome))


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.train", add_arguments, run, argv)


if __name__ == "__main__":
    main()
