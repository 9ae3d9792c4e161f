"""Step: the loop on one screen: the stack, champion and serving version, the last drift verdicts,
retraining attempts, and the tables.

    lakeloop status [--serve-config conf/serve.yaml] [--json]
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, add_serve_config, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serve_config(parser, "whose HTTP address is asked which version it serves")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.monitoring.loop_status import describe, gather

    status = gather(config, args.serve_config)
    return StepResult(describe(status), status)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.status", add_arguments, run, argv)


if __name__ == "__main__":
    main()
