"""Step: compare served traffic with the champion's training data; retrain through the Jobs API.

    lakeloop monitor --once          # for cron / KubeRay schedules
    lakeloop monitor                 # loop every monitor.interval_s
    python -m pipelines.monitor --once

Each run reads the prediction rows after the last checked window (the position is the newest
window_end in the drift_reports Delta table, written in the same commit as the reports, so a
restart neither skips nor double-counts windows), runs the champion's detectors on every full
window, appends one row per window and detector, logs metrics and a report image to MLflow, and
when k of the last n windows drifted submits retraining with a deterministic submission id.
The monitor never talks to Serve: an outage here cannot affect serving.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from deltalake import DeltaTable, write_deltalake

from pipelines import drift_policy
from pipelines.config import CONFIG_YAML_ENV, LakeloopConfig
from pipelines.drift import DriftSuite, performance_check
from pipelines.labelled_feedback import RECEIVED_AT, labelled_rows
from pipelines.errors import LakeloopError
from pipelines.steps import StepResult, step_main

T = TypeVar("T")
DRIFT_ARTIFACT = "drift"
PERFORMANCE = "performance"  # the detector name of performance-drift reports

REPORT_SCHEMA = pa.schema(
    [
        pa.field("window_start", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("window_end", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("detector", pa.string(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("is_drift", pa.bool_()),  # null: no decision (too few rows)
        pa.field("p_value", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("distance", pa.float64()),
        pa.field("details", pa.string()),
        pa.field("checked_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


class MonitorError(LakeloopError):
    """MLflow or the Jobs API stayed unreachable after retries."""


def with_retries(what: str, attempts: int, fn: Callable[[], T], wait_s: float = 2.0) -> T:
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any outage is retried, then reported
            if attempt == attempts:
                raise MonitorError(f"{what} failed after {attempts} attempts: {exc}") from None
            print(f"warning: {what} failed (attempt {attempt}/{attempts}): {exc}", flush=True)
            time.sleep(wait_s * attempt)
    raise AssertionError("unreachable")


def last_position(reports_uri: str, performance: bool = False) -> datetime | None:
    """End of the newest checked window: of served traffic (by served_at), or with `performance`,
    of labelled feedback (by received_at). Each advances independently."""
    if not DeltaTable.is_deltatable(reports_uri):
        return None
    kind = pc.field("detector") == PERFORMANCE
    condition = kind if performance else ~kind
    ends = DeltaTable(reports_uri).to_pyarrow_dataset().to_table(columns=["window_end"], filter=condition).column(0)
    return pc.max(ends).as_py()


def unchecked_rows(predictions_uri: str, after: datetime | None, columns: list[str]) -> pd.DataFrame:
    if not DeltaTable.is_deltatable(predictions_uri):
        return pd.DataFrame(columns=columns)
    data = DeltaTable(predictions_uri).to_pyarrow_dataset()
    condition = None if after is None else pc.field("served_at") > pa.scalar(after, pa.timestamp("us", tz="UTC"))
    return data.to_table(columns=columns, filter=condition).to_pandas()


@dataclass
class Champion:
    name: str
    version: str
    run_id: str
    suite: DriftSuite
    test_metrics: dict[str, float]  # logged by the training run: the performance-drift reference


def load_champion(config: LakeloopConfig) -> Champion:
    import mlflow

    from pipelines.registry import Registry
    from serve.model_source import MlflowModelSource, ModelRef

    champion = Registry.from_config(config).champion()
    if champion is None:
        raise LakeloopError(f"model '{config.mlflow.registered_model}' has no champion to monitor yet")
    ref = ModelRef(champion.name, str(champion.version), "champion", champion.run_id)
    model = MlflowModelSource(config.mlflow.tracking_uri, champion.name).load(ref)
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    directory = mlflow.artifacts.download_artifacts(run_id=champion.run_id, artifact_path=DRIFT_ARTIFACT)
    logged = mlflow.MlflowClient().get_run(champion.run_id).data.metrics
    test_metrics = {k.removeprefix("test_"): v for k, v in logged.items() if k.startswith("test_")}
    return Champion(champion.name, str(champion.version), champion.run_id, DriftSuite.load(Path(directory), model),
                    test_metrics)


def report_rows(window: drift_policy.Window, champion: Champion, results, now: datetime) -> list[dict]:
    base = {"window_start": window.start, "window_end": window.end, "rows": len(window.rows),
            "model_name": champion.name, "model_version": champion.version, "checked_at": now}
    if not window.decidable:
        return [{**base, "detector": "all", "is_drift": None, "p_value": None, "threshold": None, "distance": None,
                 "details": json.dumps({"reason": "too few rows for a decision"})}]
    return [{**base, "detector": r.detector, "is_drift": r.is_drift, "p_value": r.p_value, "threshold": r.threshold,
             "distance": r.distance, "details": json.dumps(r.details)} for r in results]


def window_decisions(reports_uri: str, version: str) -> list[bool | None]:
    """Per window of this champion version, oldest first: drifted (any detector), or None."""
    frame = DeltaTable(reports_uri).to_pandas(columns=["window_end", "model_version", "is_drift"])
    frame = frame[frame["model_version"] == version]
    grouped = frame.groupby("window_end")["is_drift"].agg(lambda s: None if s.isna().all() else bool(s.fillna(False).any()))
    return list(grouped.sort_index())


def submit_retraining(config: LakeloopConfig, champion: Champion, window_end: datetime) -> tuple[str, bool]:
    """Submit once per (champion version, triggering window); returns (id, newly submitted)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    submission = drift_policy.submission_id(champion.name, champion.version, window_end)
    prefix = drift_policy.submission_prefix(champion.name, champion.version)
    client = with_retries("connecting to the Ray Jobs API", config.monitor.retries,
                          lambda: JobSubmissionClient(config.monitor.jobs_api))
    live = [j for j in with_retries("listing jobs", config.monitor.retries, client.list_jobs)
            if (j.submission_id or "").startswith(prefix) and j.status not in (JobStatus.FAILED, JobStatus.STOPPED)]
    if live:
        return live[0].submission_id, False
    # The job trains with exactly the monitor's configuration: a child job inherits no environment,
    # and on a cluster it may run on a node that cannot see the monitor's files.
    env = {"LAKELOOP_STORAGE_ROOT": config.storage.root, "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri,
           CONFIG_YAML_ENV: yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)}
    def submit() -> bool:
        try:
            client.submit_job(entrypoint=config.monitor.retrain_entrypoint, submission_id=submission,
                              runtime_env={"env_vars": env},
                              metadata={"lakeloop.trigger": "drift", "lakeloop.champion_version": champion.version})
        except RuntimeError as exc:
            if "already exists" in str(exc):  # another monitor submitted the same window first
                return False
            raise
        return True

    return submission, with_retries(f"submitting retraining to {config.monitor.jobs_api}", config.monitor.retries, submit)


def _log_to_mlflow(config: LakeloopConfig, champion: Champion, reports: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_experiment(f"{config.mlflow.experiment}-monitor")
    with mlflow.start_run(run_name=f"monitor-v{champion.version}", tags={"lakeloop.job": "monitor",
                                                                          "lakeloop.model_version": champion.version}):
        for report in reports:
            step = int(report["window_end"].timestamp())
            if report["p_value"] is not None:
                mlflow.log_metric(f"{report['detector']}_p_value", report["p_value"], step=step)
            if report["distance"] is not None:
                mlflow.log_metric(f"{report['detector']}_distance", report["distance"], step=step)
            if report["is_drift"] is not None:
                mlflow.log_metric(f"{report['detector']}_drift", float(report["is_drift"]), step=step)
            p_values = json.loads(report["details"]).get("p_values")
            if p_values:
                figure, axis = plt.subplots(figsize=(7, 3))
                axis.bar(list(p_values), list(p_values.values()))
                axis.axhline(report["threshold"], color="red", linewidth=1, label="threshold")
                axis.set_yscale("log")
                axis.set_ylabel("p-value")
                axis.set_title(f"window ending {report['window_end']:%Y-%m-%d %H:%M:%S}")
                axis.tick_params(axis="x", rotation=30)
                figure.tight_layout()
                mlflow.log_figure(figure, f"drift/window-{step}.png")
                plt.close(figure)


def run_once(config: LakeloopConfig, submit: bool = True) -> dict:
    monitor = config.monitor
    storage = config.storage
    reports_uri = storage.table_uri(monitor.drift_reports_table)
    predictions_uri = storage.table_uri(config.serving.prediction_log.predictions_table)
    champion = with_retries("loading the champion's detectors from MLflow", monitor.retries,
                            lambda: load_champion(config))
    after = last_position(reports_uri)
    columns = ["request_id", "row", "served_at", *config.dataset.feature_names]
    rows = unchecked_rows(predictions_uri, after, columns)
    if monitor.window_seconds:
        start = after or (rows["served_at"].min() - pd.Timedelta(microseconds=1) if len(rows) else datetime.now(UTC))
        windows = drift_policy.time_windows(rows, monitor.window_seconds, monitor.min_rows, start, datetime.now(UTC))
    else:
        windows = drift_policy.row_windows(rows, monitor.window_rows)
    now = datetime.now(UTC)
    started = time.perf_counter()
    reports: list[dict] = []
    for window in windows:
        results = champion.suite.check(window.rows[config.dataset.feature_names]) if window.decidable else []
        reports += report_rows(window, champion, results, now)
    labelled = drift_policy.row_windows(labelled_rows(config, last_position(reports_uri, performance=True)),
                                        monitor.feedback_window_rows, time_column=RECEIVED_AT)
    metric = config.gate.metric
    for window in labelled:
        result = performance_check(champion.suite.model, window.rows, metric, champion.test_metrics.get(metric),
                                   monitor.max_metric_drop)
        reports += report_rows(window, champion, [result], now)
    if reports:  # reports and the new position land in one commit
        write_deltalake(reports_uri, pa.Table.from_pylist(reports, schema=REPORT_SCHEMA), mode="append",
                        storage_options=storage.storage_options or None)
        with_retries("logging drift to MLflow", monitor.retries, lambda: _log_to_mlflow(config, champion, reports))
    decisions = window_decisions(reports_uri, champion.version) if DeltaTable.is_deltatable(reports_uri) else []
    triggered = drift_policy.should_retrain(decisions, monitor.debounce.k, monitor.debounce.n)
    detected = time.perf_counter()
    submission, submitted = None, False
    if triggered and submit:  # no new window this run: retry the trigger of the newest one
        submission, submitted = submit_retraining(config, champion, windows[-1].end if windows else after)
    seconds = {"detect": round(detected - started, 2), "submit": round(time.perf_counter() - detected, 2)}
    return {"model_version": champion.version, "windows": _summaries(windows, reports, traffic=True),
            "performance_windows": _summaries(labelled, reports, traffic=False),
            "pending_rows": len(rows) - sum(len(w.rows) for w in windows), "triggered": triggered,
            "submission_id": submission, "submitted": submitted, "seconds": seconds,
            "reports": [{k: (str(v) if isinstance(v, datetime) else v) for k, v in r.items()} for r in reports]}


def _summaries(windows: list[drift_policy.Window], reports: list[dict], traffic: bool) -> list[dict]:
    def drifted(window: drift_policy.Window) -> bool | None:
        decided = [r["is_drift"] for r in reports if r["window_end"] == window.end
                   and (r["detector"] != PERFORMANCE) == traffic and r["is_drift"] is not None]
        return any(decided) if decided else None

    return [{"start": str(w.start), "end": str(w.end), "rows": len(w.rows), "drift": drifted(w)} for w in windows]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="check the new windows once and exit (cron, KubeRay)")
    parser.add_argument("--no-submit", action="store_true", help="report drift but never submit retraining")


def describe(outcome: dict) -> str:
    flags = ", ".join("drift" if w["drift"] else "no decision" if w["drift"] is None else "ok" for w in outcome["windows"])
    line = f"champion v{outcome['model_version']}: {len(outcome['windows'])} new windows ({flags or 'none'}), " \
           f"{outcome['pending_rows']} rows waiting for a full window"
    performance = [w for w in outcome.get("performance_windows", []) if w["drift"] is not None]
    if performance:
        worse = sum(w["drift"] for w in performance)
        line += f"; performance: {worse} of {len(performance)} labelled windows below the test score"
    if outcome["triggered"]:
        verb = "submitted" if outcome["submitted"] else "already submitted"
        line += f"; retraining {verb}: {outcome['submission_id']}"
    return line


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    if args.once:
        outcome = run_once(config, submit=not args.no_submit)
        return StepResult(describe(outcome), outcome)
    while True:
        try:
            print(describe(run_once(config, submit=not args.no_submit)), flush=True)
        except LakeloopError as exc:  # report and keep watching
            print(f"error: {exc}", flush=True)
        time.sleep(config.monitor.interval_s)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.monitor", add_arguments, run, argv)


if __name__ == "__main__":
    main()
