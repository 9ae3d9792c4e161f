"""One monitor pass: check the new windows of served traffic and labelled feedback against the
champion, record them, and take the retraining step."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import KEY, LABEL, RECEIVED_AT, REQUEST_ID, SERVED_AT, UPDATE, UTC_MICROS
from pipelines.core import drift_policy
from pipelines.core.config import LakeloopConfig
from pipelines.core.loop_outcomes import MonitorPass, OnlineStep
from pipelines.core.service_retries import with_retries
from pipelines.monitoring import html_report, reports
from pipelines.monitoring.champion import Champion, load_champion
from pipelines.monitoring.online_gate import online_step
from pipelines.monitoring.reports import RANK
from pipelines.monitoring.retraining import retraining_step
from pipelines.training.detectors import DetectorResult, performance_check
from pipelines.training.labelled_feedback import join_labels, quarantine


@dataclass
class Landed:
    """Rows that landed in a source table after the monitor's position, cut into windows."""

    windows: list[drift_policy.Window]
    time_column: str
    pending: int  # rows waiting for a full window
    orphans: int = 0  # labels whose served row never landed within monitor.label_join_wait_s


def _since(
    table: delta.Table, config: LakeloopConfig, performance: bool, columns: list[str], order: list[str]
) -> pd.DataFrame | None:
    """The rows of `table` after the monitor's position (a commit version and how many of its rows, in
    the canonical order, were checked), each ranked within its commit."""
    version, offset = reports.position(config, performance)
    landed = table.changes(None if version is None else version - 1, columns)
    if landed is None:
        return None
    rows = landed[0].to_pandas().sort_values([delta.COMMIT_VERSION, *order], kind="stable")
    rows[RANK] = rows.groupby(delta.COMMIT_VERSION).cumcount() + 1
    if version is not None:
        rows = rows[(rows[delta.COMMIT_VERSION] != version) | (rows[RANK] > offset)]
    return rows.reset_index(drop=True)


def _traffic(config: LakeloopConfig) -> Landed:
    """Windows of the served rows that landed (by Delta commit) after the last checked window: a row
    that lands late (another replica's flush, a retried append) is checked in a later window, and no row
    twice. Row windows never split a request; time windows are by commit time."""
    monitor = config.monitor
    rows = _since(
        delta.tables(config).predictions,
        config,
        False,
        [*KEY, SERVED_AT, *config.dataset.feature_names],
        [SERVED_AT, *KEY],
    )
    if rows is None:
        return Landed([], SERVED_AT, 0)
    if monitor.window_seconds:
        _, last_end = reports.position_time(config)
        now = datetime.now(UTC).replace(tzinfo=None)
        times = rows[delta.COMMIT_TIME]
        start = (
            last_end.replace(tzinfo=None)
            if last_end is not None
            else (times.min() - pd.Timedelta(microseconds=1) if len(rows) else now)
        )
        windows = drift_policy.time_windows(
            rows, delta.COMMIT_TIME, monitor.window_seconds, monitor.min_rows, start, now
        )
        return Landed(windows, delta.COMMIT_TIME, len(rows) - sum(len(w.rows) for w in windows))
    windows = drift_policy.row_windows(rows, monitor.window_rows, [delta.COMMIT_VERSION, SERVED_AT], [*KEY])
    return Landed(windows, SERVED_AT, len(rows) - sum(len(w.rows) for w in windows))


def _labels(config: LakeloopConfig) -> Landed:
    """Windows of the labels that landed after the last checked performance window, joined with the
    rows they label. A label whose row has not landed yet holds itself (and the labels after it) back
    until it does, or until monitor.label_join_wait_s has passed (then it is counted as orphaned)."""
    monitor, feedback = config.monitor, delta.tables(config).feedback
    schema = feedback.schema()
    columns = [*KEY, RECEIVED_AT, LABEL, *([UPDATE] if schema is not None and UPDATE in schema.names else [])]
    rows = _since(feedback, config, True, columns, [RECEIVED_AT, *KEY])
    if rows is None:
        return Landed([], RECEIVED_AT, 0)
    # every label of these rows, earlier ones included: a repeated label that does not stand is dropped
    history = feedback.read(columns, pc.field(REQUEST_ID).isin(pa.array(rows[REQUEST_ID].unique(), pa.string())))
    result = join_labels(config, pa.Table.from_pandas(rows, preserve_index=False), history)
    quarantine(config, result.invalid)
    joined, unjoined = result.joined, result.unjoined
    waiting_since = datetime.now(UTC) - timedelta(seconds=monitor.label_join_wait_s)
    young = unjoined.filter(pc.greater(unjoined.column(RECEIVED_AT), pa.scalar(waiting_since, UTC_MICROS)))
    if young.num_rows:  # check only the labels before the first one still waiting for its row
        first = min(zip(young.column(delta.COMMIT_VERSION).to_pylist(), young.column(RANK).to_pylist(), strict=True))
        before = (joined[delta.COMMIT_VERSION] < first[0]) | (
            (joined[delta.COMMIT_VERSION] == first[0]) & (joined[RANK] < first[1])
        )
        joined = joined[before]
    windows = drift_policy.row_windows(joined, monitor.feedback_window_rows, [delta.COMMIT_VERSION, RANK])
    return Landed(
        windows,
        RECEIVED_AT,
        len(joined) - sum(len(w.rows) for w in windows),
        orphans=unjoined.num_rows - young.num_rows,
    )


@dataclass
class Checked:
    """A traffic window, what the detectors found on it, and its report rows."""

    window: drift_policy.Window
    results: list[DetectorResult]
    reports: list[dict]


def _check(
    config: LakeloopConfig, champion: Champion, traffic: Landed, labelled: Landed
) -> tuple[list[Checked], list[dict]]:
    """The traffic detectors on each window of served rows; one report row per labelled window and
    the gate metric on it."""
    now, metric, checked, performance = datetime.now(UTC), config.gate.metric, [], []
    for window in traffic.windows:
        results = champion.suite.check(window.rows[config.dataset.feature_names]) if window.decidable else []
        found = reports.report_rows(window, traffic.time_column, champion, results, now)
        checked.append(Checked(window, results, found))
    for window in labelled.windows:
        result = performance_check(
            champion.suite.model, window.rows, metric, champion.test_metrics.get(metric), config.monitor.max_metric_drop
        )
        result.details["orphaned_labels"] = labelled.orphans
        performance += reports.report_rows(window, labelled.time_column, champion, [result], now)
    return checked, performance


# Pages per pass: the drifted windows and the newest one. A figure per window kept a monitor catching up
# on 19 windows busy for minutes against a loaded MLflow server (tests/faults), while the Delta reports,
# the source of truth, were already written.
MAX_PAGES_PER_PASS = 3


def _pages(
    config: LakeloopConfig,
    champion: Champion,
    checked: list[Checked],
    performance: list[dict],
    online: OnlineStep | None,
) -> dict:
    """HTML reports (artifact path -> page) for the drifted windows of the pass and its newest one."""
    decided = [c for c in checked if c.results]
    drifted = [c for c in decided if any(r.is_drift for r in c.results)]
    chosen = {id(c): c for c in [*drifted[-(MAX_PAGES_PER_PASS - 1) :], *decided[-1:]]}.values()
    pages = {}
    for c in chosen:
        start, end = c.reports[0]["window_start"], c.reports[0]["window_end"]
        span = f"{c.window.rows.shape[0]} rows served {start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S}"
        rows = c.window.rows[config.dataset.feature_names]
        pages[reports.report_path(end)] = html_report.render(champion, rows, c.results, span, performance, online)
    return pages


def run_once(config: LakeloopConfig, submit: bool = True) -> MonitorPass:
    monitor = config.monitor
    champion = with_retries(
        "loading the champion's detectors from MLflow", monitor.retries, lambda: load_champion(config)
    )
    started = time.perf_counter()
    claim = reports.claim_pass(config)  # another monitor committing first makes this pass's reports void
    traffic, labelled = _traffic(config), _labels(config)
    checked, performance = _check(config, champion, traffic, labelled)
    found = [row for c in checked for row in c.reports] + performance
    recorded = bool(found) and reports.record(config, found, claim)
    online = online_step(config, champion) if submit else None  # before retraining: it may end an attempt
    began = drift_policy.trigger_start(
        reports.window_decisions(config, champion.version), monitor.debounce.k, monitor.debounce.n
    )
    detected = time.perf_counter()
    retraining = retraining_step(config, champion, began, submit)
    submitted = time.perf_counter()
    # The MLflow copy (metrics and pages) after the submission: the decision reads the Delta reports
    # only, and the pages and their upload took 0.8-1.4 s of a drifted pass in the demo.
    if recorded:
        pages = _pages(config, champion, checked, performance, online)
        with_retries(
            "logging drift to MLflow", monitor.retries, lambda: reports.log_to_mlflow(config, champion, found, pages)
        )
    checked = found if recorded else []
    return MonitorPass(
        model_version=champion.version,
        windows=reports.summaries(checked, performance=False),
        performance_windows=reports.summaries(checked, performance=True),
        pending_rows=traffic.pending,
        pending_labels=labelled.pending,
        orphaned_labels=labelled.orphans,
        concurrent_monitor=bool(found) and not recorded,
        triggered=began is not None,
        retraining=retraining,
        seconds={
            "detect": round(detected - started, 2),
            "submit": round(submitted - detected, 2),
            "log": round(time.perf_counter() - submitted, 2),
        },
        reports=[{k: (str(v) if isinstance(v, datetime) else v) for k, v in r.items()} for r in checked],
        online=online,
    )


def describe(outcome: MonitorPass) -> str:
    flags = ", ".join(drift_policy.verdict(w.drift) for w in outcome.windows)
    line = (
        f"champion v{outcome.model_version}: {len(outcome.windows)} new windows ({flags or 'none'}), "
        f"{outcome.pending_rows} rows waiting for a full window"
    )
    performance = [w for w in outcome.performance_windows if w.drift is not None]
    if performance:
        worse = sum(bool(w.drift) for w in performance)
        line += f"; performance: {worse} of {len(performance)} labelled windows below the test score"
    if outcome.online is not None:
        step = outcome.online
        line += f"; candidate v{step.candidate_version}: {step.action} ({step.reason})"
    retraining = outcome.retraining
    if retraining.action == "submit":
        verb = "submitted" if retraining.submitted else "already submitted"
        line += f"; retraining {verb}: {retraining.submission_id} ({retraining.reason})"
    elif retraining.action == "wait":
        line += f"; retraining: {retraining.reason}"
    elif retraining.state == "degraded":
        line += f"\nDEGRADED: {retraining.reason}"
    elif retraining.reason:
        line += f"; {retraining.reason}"
    return line
