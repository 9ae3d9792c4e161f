"""Step: compare served traffic with the champion's training data; retrain through the Jobs API.

    lakeloop monitor --once          # for cron / KubeRay schedules
    lakeloop monitor                 # loop every monitor.interval_s
    python -m pipelines.monitor --once

Each run reads the prediction rows after the last checked window (the position is the newest
window_end in the drift_reports Delta table, written in the same commit as the reports, so a
restart neither skips nor double-counts windows), runs the champion's detectors on every full
window, appends one row per window and detector, logs metrics and a report image to MLflow, and
when k of the last n windows drifted submits retraining with a deterministic submission id.

Retraining is tracked, not fire-and-forget: every attempt for a champion and its outcome (promoted,
refused by the gate, failed) lands in the retraining_attempts Delta table. A refused attempt is
retried once enough new training rows have arrived (monitor.retry), and after the last attempt the
champion is marked degraded in the registry, which GET /model and `lakeloop model list` show.
The monitor never talks to Serve: an outage here cannot affect serving.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipelines import delta_tables, drift_policy, retry_policy
from pipelines.jobs import Jobs
from pipelines.retrying import with_retries
from pipelines.config import CONFIG_YAML_ENV, LakeloopConfig
from pipelines.drift import DriftSuite, performance_check
from pipelines.labelled_feedback import RECEIVED_AT, labelled_rows
from pipelines.errors import LakeloopError
from pipelines.steps import StepResult, step_main

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
        pa.field("data_start", pa.timestamp("us", tz="UTC")),  # event time of the window's oldest row: where drift began
    ]
)

ATTEMPT_SCHEMA = pa.schema(
    [
        pa.field("champion_name", pa.string(), nullable=False),
        pa.field("champion_version", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),  # 0: an event about the champion (degraded, recovered)
        pa.field("submission_id", pa.string()),
        pa.field("event", pa.string(), nullable=False),  # submitted | promoted | refused | failed | degraded | recovered
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tune", pa.bool_()),
        pa.field("training_rows", pa.int64()),
        pa.field("regime_start", pa.timestamp("us", tz="UTC")),
        pa.field("candidate_version", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def last_position(config: LakeloopConfig, performance: bool = False) -> datetime | None:
    """End of the newest checked window: of served traffic (by served_at), or with `performance`,
    of labelled feedback (by received_at). Each advances independently."""
    kind = pc.field("detector") == PERFORMANCE
    ends = delta_tables.read(config.storage.table_uri(config.monitor.drift_reports_table), config.storage.storage_options,
                             ["window_end"], kind if performance else ~kind)
    return None if ends is None else pc.max(ends.column(0)).as_py()


def unchecked_rows(config: LakeloopConfig, after: datetime | None, columns: list[str]) -> pd.DataFrame:
    condition = None if after is None else pc.field("served_at") > pa.scalar(after, pa.timestamp("us", tz="UTC"))
    rows = delta_tables.read(config.storage.table_uri(config.serving.prediction_log.predictions_table),
                             config.storage.storage_options, columns, condition)
    return pd.DataFrame(columns=columns) if rows is None else rows.to_pandas()


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
    served = window.rows[drift_policy.SERVED_AT] if drift_policy.SERVED_AT in window.rows and len(window.rows) else None
    base = {"window_start": window.start, "window_end": window.end, "rows": len(window.rows),
            "model_name": champion.name, "model_version": champion.version, "checked_at": now,
            "data_start": window.start if served is None else served.min()}
    if not window.decidable:
        return [{**base, "detector": "all", "is_drift": None, "p_value": None, "threshold": None, "distance": None,
                 "details": json.dumps({"reason": "too few rows for a decision"})}]
    return [{**base, "detector": r.detector, "is_drift": r.is_drift, "p_value": r.p_value, "threshold": r.threshold,
             "distance": r.distance, "details": json.dumps(r.details)} for r in results]


def window_decisions(config: LakeloopConfig, version: str) -> dict[str, list[tuple[bool | None, datetime]]]:
    """Per kind of window ("traffic", "performance") of this champion version, oldest first: (drifted by
    any detector, or None for no decision; the event time of the window's oldest row). The kinds are
    debounced apart: calm traffic windows must not outvote labels that show the model is wrong."""
    table = delta_tables.read(config.storage.table_uri(config.monitor.drift_reports_table),
                              config.storage.storage_options,
                              ["window_start", "window_end", "detector", "is_drift", "data_start"],
                              pc.field("model_version") == version)
    if table is None or table.num_rows == 0:
        return {}
    frame = table.to_pandas()
    if "data_start" not in frame:  # reports written before data_start existed
        frame["data_start"] = frame["window_start"]
    frame["data_start"] = frame["data_start"].fillna(frame["window_start"])
    frame["kind"] = (frame["detector"] == PERFORMANCE).map({True: PERFORMANCE, False: "traffic"})
    grouped = frame.groupby(["kind", "window_end"]).agg(
        drift=("is_drift", lambda s: None if s.isna().all() else bool(s.fillna(False).any())),
        start=("data_start", "min"))
    return {kind: [(row.drift, row.start.to_pydatetime()) for row in part.itertuples()]
            for kind, part in grouped.sort_index().groupby(level="kind")}


def jobs(config: LakeloopConfig) -> Jobs:
    return Jobs(config.monitor.jobs_api, config.monitor.retries)


def submit_retraining(config: LakeloopConfig, champion: Champion, plan: retry_policy.RetrainingPlan,
                      regime_start: datetime | None) -> tuple[str, bool]:
    """Submit the planned attempt; returns (id, newly submitted). The id is deterministic per
    (champion version, attempt), so a second monitor's submission is refused by the Jobs API."""
    submission = drift_policy.submission_id(champion.name, champion.version, plan.attempt)
    # The job trains with exactly the monitor's configuration: a child job inherits no environment,
    # and on a cluster it may run on a node that cannot see the monitor's files.
    env = {"LAKELOOP_STORAGE_ROOT": config.storage.root, "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri,
           CONFIG_YAML_ENV: yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)}
    entrypoint = f"{config.monitor.retrain_entrypoint} --trigger-id {shlex.quote(submission)}"
    entrypoint += f" --regime-start {regime_start.isoformat()}" if regime_start else ""
    entrypoint += " --tune" if plan.tune else ""
    metadata = {"lakeloop.trigger": "drift", "lakeloop.champion_version": champion.version,
                "lakeloop.attempt": str(plan.attempt)}
    return submission, jobs(config).submit(entrypoint, submission, env, metadata)


def attempt_events(config: LakeloopConfig, champion: Champion) -> list[dict]:
    table = delta_tables.read(config.storage.table_uri(config.monitor.attempts_table), config.storage.storage_options,
                              filter=(pc.field("champion_name") == champion.name)
                              & (pc.field("champion_version") == champion.version))
    return [] if table is None else table.to_pylist()


def record_events(config: LakeloopConfig, events: list[dict]) -> None:
    if events:
        delta_tables.append(config.storage.table_uri(config.monitor.attempts_table),
                            pa.Table.from_pylist(events, schema=ATTEMPT_SCHEMA), config.storage.storage_options)


def _event(champion: Champion, event: str, attempt: int = 0, **fields) -> dict:
    return {"champion_name": champion.name, "champion_version": champion.version, "attempt": attempt,
            "event": event, "at": datetime.now(UTC), **fields}


def job_outcome(config: LakeloopConfig, submission_id: str) -> tuple[str, str, str | None] | None:
    """(promoted | refused | failed, reason, candidate version) of a finished attempt; None while it runs."""
    from mlflow import MlflowClient

    from pipelines.registry import TRIGGER_TAG

    state = jobs(config).state(submission_id)
    if state is None:
        return retry_policy.FAILED, "the Jobs API does not know this job (was the cluster restarted?)", None
    if not state.finished:
        return None
    if state.status != "SUCCEEDED":
        return retry_policy.FAILED, f"job {state.status}: {state.message[-300:]}", None
    found = with_retries("reading the retrained model from MLflow", config.monitor.retries, lambda: MlflowClient(
        config.mlflow.tracking_uri).search_model_versions(f"name = '{config.mlflow.registered_model}' and "
                                                          f"tags.`{TRIGGER_TAG}` = '{submission_id}'"))
    if not found:
        return retry_policy.FAILED, "the job succeeded but registered no model version", None
    version = found[0]
    outcome = retry_policy.PROMOTED if version.tags.get("lakeloop.gate") == "promoted" else retry_policy.REFUSED
    return outcome, version.tags.get("lakeloop.gate_reason", ""), str(version.version)


def reconcile(config: LakeloopConfig, champion: Champion, events: list[dict]) -> list[dict]:
    """Outcome events for attempts whose job has finished since the last pass."""
    found = []
    for attempt in retry_policy.fold_attempts(events):
        if attempt.outcome == retry_policy.SUBMITTED and (outcome := job_outcome(config, attempt.submission_id)) is not None:
            kind, reason, candidate = outcome
            found.append(_event(champion, kind, attempt.number, submission_id=attempt.submission_id, tune=attempt.tune,
                                training_rows=attempt.training_rows, candidate_version=candidate, reason=reason))
    return found


def training_rows(config: LakeloopConfig) -> int:
    """Rows in what train.source reads: the events table and/or labels received through /feedback."""
    storage, log = config.storage, config.serving.prediction_log
    tables = {"events": [config.table_uri], "feedback": [storage.table_uri(log.feedback_table)],
              "both": [config.table_uri, storage.table_uri(log.feedback_table)]}[config.train.source]
    return sum(delta_tables.count(uri, storage.storage_options) for uri in tables)


def retraining_step(config: LakeloopConfig, champion: Champion, regime_start: datetime | None, submit: bool) -> dict:
    """Reconcile finished attempts, then submit, wait, or report the loop degraded."""
    events = attempt_events(config, champion)
    new = reconcile(config, champion, events) if submit else []
    events += new
    rows = training_rows(config)
    plan = retry_policy.plan_retraining(retry_policy.fold_attempts(events), regime_start is not None, rows,
                                        config.monitor.retry)
    submission, submitted = None, False
    if plan.action == "submit" and submit:
        submission, submitted = submit_retraining(config, champion, plan, regime_start)
        new.append(_event(champion, retry_policy.SUBMITTED, plan.attempt, submission_id=submission, tune=plan.tune,
                          training_rows=rows, regime_start=regime_start, reason=plan.reason))
    degraded, _ = retry_policy.health(events)
    if plan.action == "degraded" and not degraded:
        new.append(_event(champion, retry_policy.DEGRADED, reason=plan.reason))
    elif degraded and plan.action == "none":
        new.append(_event(champion, retry_policy.RECOVERED, reason=plan.reason or "recent windows no longer drift"))
    record_events(config, new)
    if any(e["event"] in (retry_policy.DEGRADED, retry_policy.RECOVERED) for e in new):
        from pipelines.registry import Registry

        reason = plan.reason if plan.action == "degraded" else None
        with_retries("marking the champion's health in MLflow", config.monitor.retries,
                     lambda: Registry.from_config(config).set_health(champion.version, reason))
    attempts = retry_policy.fold_attempts(events + new)
    if submission is None and attempts and attempts[-1].outcome == retry_policy.SUBMITTED:
        submission = attempts[-1].submission_id
    state = "degraded" if plan.action == "degraded" else "retraining" if plan.action in ("submit", "wait") else "ok"
    return {"state": state, "action": plan.action, "reason": plan.reason, "submission_id": submission,
            "submitted": submitted, "training_rows": rows,
            "regime_start": regime_start.isoformat() if regime_start else None,
            "attempts": [{"attempt": a.number, "submission_id": a.submission_id, "tune": a.tune, "outcome": a.outcome,
                          "reason": a.reason, "candidate_version": a.candidate_version} for a in attempts]}


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
    champion = with_retries("loading the champion's detectors from MLflow", monitor.retries,
                            lambda: load_champion(config))
    after = last_position(config)
    columns = ["request_id", "row", "served_at", *config.dataset.feature_names]
    rows = unchecked_rows(config, after, columns)
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
    labelled = drift_policy.row_windows(labelled_rows(config, last_position(config, performance=True)),
                                        monitor.feedback_window_rows, time_column=RECEIVED_AT)
    metric = config.gate.metric
    for window in labelled:
        result = performance_check(champion.suite.model, window.rows, metric, champion.test_metrics.get(metric),
                                   monitor.max_metric_drop)
        reports += report_rows(window, champion, [result], now)
    if reports:  # reports and the new position land in one commit
        delta_tables.append(config.storage.table_uri(monitor.drift_reports_table),
                            pa.Table.from_pylist(reports, schema=REPORT_SCHEMA), config.storage.storage_options,
                            merge_schema=True)
        with_retries("logging drift to MLflow", monitor.retries, lambda: _log_to_mlflow(config, champion, reports))
    began = drift_policy.trigger_start(window_decisions(config, champion.version), monitor.debounce.k, monitor.debounce.n)
    detected = time.perf_counter()
    retraining = retraining_step(config, champion, began, submit)
    seconds = {"detect": round(detected - started, 2), "submit": round(time.perf_counter() - detected, 2)}
    return {"model_version": champion.version, "windows": _summaries(windows, reports, traffic=True),
            "performance_windows": _summaries(labelled, reports, traffic=False),
            "pending_rows": len(rows) - sum(len(w.rows) for w in windows), "triggered": began is not None,
            "submission_id": retraining["submission_id"], "submitted": retraining["submitted"],
            "retraining": retraining, "seconds": seconds,
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
    retraining = outcome["retraining"]
    if retraining["action"] == "submit":
        verb = "submitted" if retraining["submitted"] else "already submitted"
        line += f"; retraining {verb}: {retraining['submission_id']} ({retraining['reason']})"
    elif retraining["action"] == "wait":
        line += f"; retraining: {retraining['reason']}"
    elif retraining["state"] == "degraded":
        line += f"\nDEGRADED: {retraining['reason']}"
    elif retraining["reason"]:
        line += f"; {retraining['reason']}"
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
