"""Step: compare served traffic with the champion's training data; retrain through the Jobs API.

    lakeloop monitor --once          # for cron / KubeRay schedules
    lakeloop monitor                 # loop every monitor.interval_s
    lakeloop monitor report [--open] # write the newest drift report (HTML) from MLflow to a file
    python -m pipelines.monitor --once

Each run reads the prediction rows that landed after the last checked one (the position is a Delta
commit version of the predictions table and how many of its rows were checked, written with the
reports in one commit, so a restart neither skips nor double-counts rows, and a row that lands late
is checked in a later window), runs the champion's detectors on every full window, appends one row
per window and detector (each feature's p-value next to its effect sizes), logs the metrics to the
champion version's one monitor run in MLflow (stepped by window end: a timeline) with an HTML report
of the drifted windows and the newest one, and when k of the last n windows drifted submits
retraining with a deterministic submission id.

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
from functools import partial
from pathlib import Path

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.step_runner import StepResult, add_actions, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="check the new windows once and exit (cron, KubeRay)")
    parser.add_argument("--no-submit", action="store_true", help="report drift but never submit retraining")
    report = add_actions(parser, {"report": "write the newest drift report (HTML) from MLflow to a file"}, False)
    report["report"].add_argument(
        "--output", type=Path, default=Path("drift-report.html"), help="where to write it (default: drift-report.html)"
    )
    report["report"].add_argument("--open", action="store_true", help="then open it in a web browser")


# MLflow's client retries a failed request 7 times with backoff up to 2 min each, 120 s timeout:
# a pass meeting a flaky MLflow server then stalled for many minutes (tests/faults). The monitor's
# own retries (monitor.retries) are the policy; the user's values of these variables win.
MLFLOW_CLIENT_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.monitoring.check import describe, run_once

    for name, value in MLFLOW_CLIENT_BOUNDS.items():
        os.environ.setdefault(name, value)

    if getattr(args, "action", None) == "report":
        return _report(args, config)
    if args.once:
        outcome = run_once(config, submit=not args.no_submit)
        return StepResult(describe(outcome), outcome.to_dict())
    recorder = _metrics(config)
    upkeep_due = time.monotonic()  # the loop maintains the tables at its start, then every maintenance.every_s
    while True:  # until interrupted: no error ends the loop, each is reported and the next pass runs
        due = bool(config.maintenance.every_s) and time.monotonic() >= upkeep_due
        for name, work in (
            ("check", partial(_pass, args, config, recorder)),
            ("upkeep", partial(_upkeep, config, due)),
        ):
            try:
                line = work()
            except Exception as exc:  # noqa: BLE001 - an unexpected one too: a watchdog must not die of it
                if recorder and name == "check":
                    recorder.failed()
                unexpected = "" if isinstance(exc, LakeloopError) else f", unexpected, {type(exc).__name__}"
                line = f"error ({name}{unexpected}): {exc}"
            if line:
                print(line, flush=True)
        if due:
            upkeep_due = time.monotonic() + config.maintenance.every_s
        time.sleep(config.monitor.interval_s)


def _metrics(config: LakeloopConfig):
    """The loop's Prometheus endpoint, if monitor.metrics_port is set and free (else it runs without)."""
    from pipelines.adapters.prometheus import MonitorMetrics

    monitor = config.monitor
    if monitor.metrics_port is None:
        return None
    recorder = MonitorMetrics()
    try:
        recorder.serve(monitor.metrics_host, monitor.metrics_port)
    except OSError as exc:
        print(f"metrics: not exported, {monitor.metrics_host}:{monitor.metrics_port} is taken ({exc})", flush=True)
        return None
    print(f"metrics: http://{monitor.metrics_host}:{monitor.metrics_port}/metrics", flush=True)
    return recorder


def _pass(args: argparse.Namespace, config: LakeloopConfig, recorder) -> str:
    from pipelines.monitoring.check import describe, run_once

    outcome = run_once(config, submit=not args.no_submit)
    if recorder:
        recorder.passed(outcome)
    return describe(outcome)


def _upkeep(config: LakeloopConfig, due: bool) -> str | None:
    """Table upkeep, when due (maintenance.every_s; None: never from the loop)."""
    if not due:
        return None
    from pipelines.monitoring.upkeep import describe, maintain

    return "upkeep: " + describe(maintain(config)).replace("\n", "\nupkeep: ")


def _report(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.monitoring.reports import latest_report

    found = latest_report(config)
    if found is None:
        raise LakeloopError(
            f"no drift report in MLflow experiment '{config.mlflow.experiment}-monitor' at "
            f"{config.mlflow.tracking_uri} yet: the monitor writes one once it has checked a full window"
        )
    page, source = found
    args.output.write_text(page)
    if args.open:
        import webbrowser

        webbrowser.open(args.output.resolve().as_uri())
    return StepResult(f"wrote {args.output} (from {source})", {"path": str(args.output), "source": source})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.monitor", add_arguments, run, argv)


if __name__ == "__main__":
    main()
