"""Step: release a change of code: retrain it on the champion's exact tables, gate, smoke-test, promote.

lakeloop release [--submission-id ID] [--json]
ray job submit --submission-id ID --working-dir . -- python -m pipelines.release --submission-id ID

Compares the code's fingerprint (lakeloop's package, the families' user modules, conf's model
sections, the pinned dependencies) with the champion's. When they differ and this fingerprint was
never released, it trains on the Delta table versions the champion was trained on, gates the
candidate against the champion on the same held-out rows, deploys it as its own Serve application
for the smoke stage (golden rows, then schemathesis), and only then promotes it. Exit 0 when
released or nothing to do, 1 when the gate or the smoke stage refused it.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.step_runner import StepResult, add_serve_config, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--submission-id",
        metavar="ID",
        help="this release's id (pass the same as ray job submit --submission-id), recorded on the version",
    )
    add_serve_config(parser, "the smoke stage's app is built from")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters import ray_serve
    from pipelines.training.release import REFUSED, release
    from pipelines.training.smoke_stage import smoke_check

    dashboard = config.ray.dashboard
    if not ray_serve.running(dashboard):
        raise LakeloopError(
            f"no Serve on the cluster at {dashboard}: a release deploys its candidate beside the running "
            "endpoint for the smoke stage (start it: lakeloop stack up, or lakeloop serve)"
        )
    outcome = release(config, smoke_check(config, dashboard, args.serve_config), args.submission_id)
    return StepResult(outcome.summary(), asdict(outcome), exit_code=1 if outcome.status == REFUSED else 0)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.release", add_arguments, run, argv)


if __name__ == "__main__":
    main()
