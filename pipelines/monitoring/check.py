"""One monitor pass: check the new windows of served traffic and labelled feedback against the
champion, record them, and take the retraining step."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import KEY, RECEIVED_AT, REQUEST_ID, ROW, SERVED_AT, labelled_rows
from pipelines.core import drift_policy
from pipelines.core.config import LakeloopConfig
from pipelines.core.retrying import with_retries
from pipelines.monitoring import reports
from pipelines.monitoring.champion import Champion, load_champion
from pipelines.monitoring.retraining import retraining_step
from pipelines.training.detectors import performance_check


def _traffic_windows(config: LakeloopConfig) -> tuple[list[drift_policy.Window], int]:
    """Full windows of the served rows after the last checked one, and how many rows still wait."""
    monitor = config.monitor
    after = reports.last_position(config)
    rows = reports.unchecked_rows(config, after, [REQUEST_ID, ROW, SERVED_AT, *config.dataset.feature_names])
    if monitor.window_seconds:
        now = datetime.now(UTC)
        start = after or (rows[SERVED_AT].min() - pd.Timedelta(microseconds=1) if len(rows) else now)
        windows = drift_policy.time_windows(rows, SERVED_AT, monitor.window_seconds, monitor.min_rows, start, now)
    else:
        windows = drift_policy.row_windows(rows, monitor.window_rows, SERVED_AT, KEY)
    return windows, len(rows) - sum(len(w.rows) for w in windows)


def _check(config: LakeloopConfig, champion: Champion, traffic: list, labelled: list) -> list[dict]:
    """One report row per window and detector: the traffic detectors on served rows, the gate metric
    on labelled rows."""
    now, metric, found = datetime.now(UTC), config.gate.metric, []
    for window in traffic:
        results = champion.suite.check(window.rows[config.dataset.feature_names]) if window.decidable else []
        found += reports.report_rows(window, champion, results, now)
    for window in labelled:
        result = performance_check(
            champion.suite.model, window.rows, metric, champion.test_metrics.get(metric), config.monitor.max_metric_drop
        )
        found += reports.report_rows(window, champion, [result], now)
    return found


def run_once(config: LakeloopConfig, submit: bool = True) -> dict:
    monitor = config.monitor
    champion = with_retries(
        "loading the champion's detectors from MLflow", monitor.retries, lambda: load_champion(config)
    )
    started = time.perf_counter()
    traffic, pending = _traffic_windows(config)
    labelled = drift_policy.row_windows(
        labelled_rows(config, reports.last_position(config, performance=True)),
        monitor.feedback_window_rows,
        RECEIVED_AT,
        KEY,
    )
    found = _check(config, champion, traffic, labelled)
    if found:  # reports and the new positions land in one commit
        delta.append(
            config.storage.table_uri(monitor.drift_reports_table),
            pa.Table.from_pylist(found, schema=reports.REPORT_SCHEMA),
            config.storage.storage_options,
            merge_schema=True,
        )
        with_retries("logging drift to MLflow", monitor.retries, lambda: reports.log_to_mlflow(config, champion, found))
    began = drift_policy.trigger_start(
        reports.window_decisions(config, champion.version), monitor.debounce.k, monitor.debounce.n
    )
    detected = time.perf_counter()
    retraining = retraining_step(config, champion, began, submit)
    return {
        "model_version": champion.version,
        "windows": reports.summaries(traffic, found, traffic=True),
        "performance_windows": reports.summaries(labelled, found, traffic=False),
        "pending_rows": pending,
        "triggered": began is not None,
        "submission_id": retraining["submission_id"],
        "submitted": retraining["submitted"],
        "retraining": retraining,
        "seconds": {"detect": round(detected - started, 2), "submit": round(time.perf_counter() - detected, 2)},
        "reports": [{k: (str(v) if isinstance(v, datetime) else v) for k, v in r.items()} for r in found],
    }


def describe(outcome: dict) -> str:
    flags = ", ".join(
        "drift" if w["drift"] else "no decision" if w["drift"] is None else "ok" for w in outcome["windows"]
    )
    line = (
        f"champion v{outcome['model_version']}: {len(outcome['windows'])} new windows ({flags or 'none'}), "
        f"{outcome['pending_rows']} rows waiting for a full window"
    )
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
