"""Step: compare served traffic with the champion's training data; retrain through the Jobs API.

    lakeloop monitor --once          # for cron / KubeRay schedules
    lakeloop monitor                 # loop every monitor.interval_s
    python -m pipelines.monitor --once

Each run reads the prediction rows that landed after the last checked one (the position is a Delta
commit version of the predictions table and how many of its rows were checked, written with the
reports in one commit, so a restart neither skips nor double-counts rows, and a row that lands late
is checked in a later window), runs the champion's detectors on every full window, appends one row
per window and detector, logs the metrics (one batch) and p-value figures of the drifted windows and
the newest one to MLflow, and when k of the last n windows drifted submits retraining with a
deterministic submission id.

Retraining is tracked, not fire-and-forget: every attempt for a champion and its outcome (promoted,
refused by the gate, failed) lands in the retraining_attempts Delta table. A refused attempt is
retried once enough new training rows have arrived (monitor.retry), and after the last attempt the
champion is marked degraded in the registry, which GET /model and `lakeloop model list` show.
The monitor never talks to Serve: an outage here cannot affect serving.
"""

from __future__ import annotations

import argparse
import os
import time

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.step_runner import StepResult, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="check the new windows once and exit (cron, KubeRay)")
    parser.add_argument("--no-submit", action="store_true", help="report drift but never submit retraining")


# MLflow's client retries a failed request 7 times with backoff up to 2 min each, 120 s timeout:
# a pass meeting a flaky MLflow server then stalled for many minutes (tests/faults). The monitor's
# own retries (monitor.retries) are the policy; the user's values of these variables win.
MLFLOW_CLIENT_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.monitoring.check import describe, run_once

    for name, value in MLFLOW_CLIENT_BOUNDS.items():
        os.environ.setdefault(name, value)

    if args.once:
        outcome = run_once(config, submit=not args.no_submit)
        return StepResult(describe(outcome), outcome)
    while True:  # until interrupted: no error ends the loop, each is reported and the next pass runs
        try:
            print(describe(run_once(config, submit=not args.no_submit)), flush=True)
        except LakeloopError as exc:
            print(f"error: {exc}", flush=True)
        except Exception as exc:  # noqa: BLE001 - an unexpected one too: a watchdog must not die of it
            print(f"error (unexpected, {type(exc).__name__}): {exc}", flush=True)
        time.sleep(config.monitor.interval_s)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.monitor", add_arguments, run, argv)


if __name__ == "__main__":
    main()
