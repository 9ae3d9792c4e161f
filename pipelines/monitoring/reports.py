"""The drift_reports Delta table: one row per checked window and detector. Its newest window ends are
the monitor's positions, written in the same commit as the reports, so a restart neither skips nor
repeats a window; its verdicts per champion version feed the debounce."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import SERVED_AT
from pipelines.core import drift_policy
from pipelines.core.config import LakeloopConfig
from pipelines.core.loop_outcomes import WindowSummary
from pipelines.monitoring.champion import Champion
from pipelines.training.detectors import PERFORMANCE

RANK = "_rank"  # a row's 1-based place within its commit (set by the check)

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
        pa.field("data_start", pa.timestamp("us", tz="UTC")),  # event time of the window's oldest row
        # the commits of the source table (predictions, or feedback for performance) the window covers: the
        # monitor's position is the newest, so a row that lands late is still checked, and exactly once
        pa.field("source_from", pa.int64()),
        pa.field("source_to", pa.int64()),
        pa.field("source_offset", pa.int64()),  # rows of commit source_to checked so far, in the canonical order
    ]
)


def _checked(config: LakeloopConfig, performance: bool, columns: list[str]) -> pa.Table | None:
    kind = pc.field("detector") == PERFORMANCE
    return delta.tables(config).drift_reports.read(columns, kind if performance else ~kind)


def position(config: LakeloopConfig, performance: bool = False) -> tuple[int | None, int]:
    """Where the next check starts: the newest source-table commit checked (of the predictions table,
    or with `performance` of the feedback table) and how many of its rows were; (None, 0) at first."""
    checked = _checked(config, performance, ["source_to", "source_offset"])
    if checked is None or "source_offset" not in checked.column_names:
        return None, 0
    frame = checked.to_pandas().dropna()
    if frame.empty:
        return None, 0
    newest = int(frame["source_to"].max())
    return newest, int(frame.loc[frame["source_to"] == newest, "source_offset"].max())


def position_time(config: LakeloopConfig) -> tuple[int | None, datetime | None]:
    """For time windows: the end of the newest checked traffic window."""
    checked = _checked(config, False, ["window_end"])
    if checked is None or checked.num_rows == 0:
        return None, None
    return None, pc.max(checked.column("window_end")).as_py()


def claim_pass(config: LakeloopConfig) -> int:
    """The reports table's version as this pass begins (before it reads its position): the pass's
    reports commit only as the very next version."""
    return delta.tables(config).drift_reports.version()


def record(config: LakeloopConfig, found: list[dict], claim: int) -> bool:
    """Append the reports (and with them the new positions) in one commit, compare-and-set on the
    claimed version: if another monitor has committed since this pass began, it checked the same
    rows, and these reports are dropped."""
    try:
        delta.tables(config).drift_reports.append(
            pa.Table.from_pylist(found, schema=REPORT_SCHEMA), merge_schema=True, expected_version=claim
        )
    except delta.CommitConflict:  # the other monitor won the race for this pass
        return False
    return True


def report_rows(
    window: drift_policy.Window, time_column: str, champion: Champion, results, now: datetime
) -> list[dict]:
    rows = window.rows
    grid = time_column == delta.COMMIT_TIME  # time windows: their bounds are the grid's, rows or not
    times = rows[time_column] if len(rows) and not grid else None
    versions = rows[delta.COMMIT_VERSION] if len(rows) else None
    base = {
        "window_start": window.start if times is None else times.min(),
        "window_end": window.end if times is None else times.max(),
        "rows": len(rows),
        "model_name": champion.name,
        "model_version": champion.version,
        "checked_at": now,
        "data_start": (rows[SERVED_AT].min() if SERVED_AT in rows and len(rows) else None),
        "source_from": None if versions is None else int(versions.min()),
        "source_to": None if versions is None else int(versions.iloc[-1]),
        "source_offset": None if versions is None else int(rows[RANK].iloc[-1]),
    }
    base["data_start"] = base["data_start"] if base["data_start"] is not None else base["window_start"]
    if not window.decidable:
        return [
            {
                **base,
                "detector": "all",
                "is_drift": None,
                "p_value": None,
                "threshold": None,
                "distance": None,
                "details": json.dumps({"reason": "too few rows for a decision"}),
            }
        ]
    return [
        {
            **base,
            "detector": r.detector,
            "is_drift": r.is_drift,
            "p_value": r.p_value,
            "threshold": r.threshold,
            "distance": r.distance,
            "details": json.dumps(r.details),
        }
        for r in results
    ]


def window_decisions(config: LakeloopConfig, version: str) -> dict[str, list[tuple[bool | None, datetime]]]:
    """Per kind of window ("traffic", "performance") of this champion version, oldest first: (drifted by
    any detector, or None for no decision; the event time of the window's oldest row). The kinds are
    debounced apart: calm traffic windows must not outvote labels that show the model is wrong."""
    table = delta.tables(config).drift_reports.read(
        ["window_start", "window_end", "detector", "is_drift", "data_start"], pc.field("model_version") == version
    )
    if table is None or table.num_rows == 0:
        return {}
    frame = table.to_pandas()
    if "data_start" not in frame:  # reports written before data_start existed
        frame["data_start"] = frame["window_start"]
    frame["data_start"] = frame["data_start"].fillna(frame["window_start"])
    frame["kind"] = (frame["detector"] == PERFORMANCE).map({True: PERFORMANCE, False: "traffic"})
    if "source_to" not in frame:  # reports written before versions were recorded
        frame["source_to"] = -1
    grouped = frame.groupby(["kind", "window_end", "source_to"], dropna=False).agg(
        drift=("is_drift", lambda s: None if s.isna().all() else bool(s.fillna(False).any())),
        start=("data_start", "min"),
    )
    return {
        kind: [(row.drift, row.start.to_pydatetime()) for row in part.itertuples()]
        for kind, part in grouped.sort_index().groupby(level="kind")
    }


REPORTS_DIR = "drift"  # the HTML reports' folder in a monitor run's artifacts
MONITOR_JOB = "monitor"  # the lakeloop.job tag of the monitor's runs


def report_path(window_end: datetime) -> str:
    """The artifact path of a window's HTML report: sorts by window end."""
    return f"{REPORTS_DIR}/report-{window_end:%Y%m%dT%H%M%S}.html"


def _metrics(reports: list[dict]) -> list:
    """Per window (step: the window end, in epoch seconds) and detector: p-value, distance, verdict,
    and the feature detector's effect sizes per feature."""
    from mlflow.entities import Metric

    metrics, now_ms = [], int(time.time() * 1000)
    for report in reports:
        step = int(report["window_end"].timestamp())
        values = {"p_value": report["p_value"], "distance": report["distance"]}
        if report["is_drift"] is not None:
            values["drift"] = float(report["is_drift"])
        named = {f"{report['detector']}_{k}": v for k, v in values.items()}
        effects = json.loads(report["details"]).get("effect_sizes", {})
        named |= {f"effect_{feature}_{m}": v for feature, sizes in effects.items() for m, v in sizes.items()}
        metrics += [Metric(name, float(v), now_ms, step) for name, v in named.items() if v is not None]
    return metrics


def champion_run(client, experiment: str, champion: Champion) -> str:
    """The monitor's one run for this champion version (created at its first checked window): its
    metrics, stepped by window end, are the version's drift timeline."""
    import mlflow

    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    runs = client.search_runs(
        [experiment_id],
        f"tags.`lakeloop.job` = '{MONITOR_JOB}' and tags.`lakeloop.model_version` = '{champion.version}' "
        f"and tags.`lakeloop.model_name` = '{champion.name}'",
        order_by=["attributes.start_time ASC"],
        max_results=1,
    )
    if runs:
        return runs[0].info.run_id
    tags = {
        "lakeloop.job": MONITOR_JOB,
        "lakeloop.model_name": champion.name,
        "lakeloop.model_version": champion.version,
        "lakeloop.champion_run": champion.run_id,
        mlflow.utils.mlflow_tags.MLFLOW_RUN_NAME: f"monitor-{champion.name}-v{champion.version}",
    }
    return client.create_run(experiment_id, tags=tags).info.run_id


def log_to_mlflow(config: LakeloopConfig, champion: Champion, reports: list[dict], pages: dict[str, str]) -> None:
    """Into the champion's monitor run: every window's metrics in batches, and the HTML reports."""
    from mlflow import MlflowClient

    client = MlflowClient(config.mlflow.tracking_uri)
    run_id = champion_run(client, f"{config.mlflow.experiment}-monitor", champion)
    metrics = _metrics(reports)
    for first in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[first : first + 1000])
    for path, page in pages.items():
        client.log_text(run_id, page, path)
    client.set_terminated(run_id)  # FINISHED between passes; the next pass logs to it again


def latest_report(config: LakeloopConfig) -> tuple[str, str] | None:
    """(the newest HTML report, where it came from) over the monitor's runs of this registered model,
    the run logged to last first."""
    from mlflow import MlflowClient

    client = MlflowClient(config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(f"{config.mlflow.experiment}-monitor")
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`lakeloop.job` = '{MONITOR_JOB}' and tags.`lakeloop.model_name` = '{config.mlflow.registered_model}'",
        order_by=["attributes.end_time DESC"],
    )
    for run in runs:
        pages = sorted(a.path for a in client.list_artifacts(run.info.run_id, REPORTS_DIR) if a.path.endswith(".html"))
        if pages:
            text = client.download_artifacts(run.info.run_id, pages[-1])
            return Path(text).read_text(), f"run {run.info.run_id} ({run.info.run_name}), {pages[-1]}"
    return None


def summaries(found: list[dict], performance: bool) -> list[WindowSummary]:
    """One line per checked window of a kind: its rows, time span, and verdict (None: no decision)."""
    windows: dict[tuple, list[dict]] = {}
    for report in found:
        if (report["detector"] == PERFORMANCE) == performance:
            windows.setdefault((report["window_start"], report["window_end"], report["source_to"]), []).append(report)
    lines = []
    for (start, end, _), rows in windows.items():
        decided = [r["is_drift"] for r in rows if r["is_drift"] is not None]
        lines.append(WindowSummary(str(start), str(end), rows[0]["rows"], any(decided) if decided else None))
    return lines
