"""The drift_reports Delta table: one row per checked window and detector. Its newest window ends are
the monitor's positions, written in the same commit as the reports, so a restart neither skips nor
repeats a window; its verdicts per champion version feed the debounce."""

from __future__ import annotations

import json
from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import SERVED_AT, UTC_MICROS
from pipelines.core import drift_policy
from pipelines.core.config import LakeloopConfig
from pipelines.monitoring.champion import Champion
from pipelines.training.detectors import PERFORMANCE

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
        pa.field(
            "data_start", pa.timestamp("us", tz="UTC")
        ),  # event time of the window's oldest row: where drift began
    ]
)


def last_position(config: LakeloopConfig, performance: bool = False) -> datetime | None:
    """End of the newest checked window: of served traffic (by served_at), or with `performance`,
    of labelled feedback (by received_at). Each advances independently."""
    kind = pc.field("detector") == PERFORMANCE
    ends = delta.read(
        config.storage.table_uri(config.monitor.drift_reports_table),
        config.storage.storage_options,
        ["window_end"],
        kind if performance else ~kind,
    )
    return None if ends is None else pc.max(ends.column(0)).as_py()


def unchecked_rows(config: LakeloopConfig, after: datetime | None, columns: list[str]) -> pd.DataFrame:
    condition = None if after is None else pc.field(SERVED_AT) > pa.scalar(after, UTC_MICROS)
    rows = delta.read(
        config.storage.table_uri(config.serving.prediction_log.predictions_table),
        config.storage.storage_options,
        columns,
        condition,
    )
    return pd.DataFrame(columns=columns) if rows is None else rows.to_pandas()


def report_rows(window: drift_policy.Window, champion: Champion, results, now: datetime) -> list[dict]:
    served = window.rows[SERVED_AT] if SERVED_AT in window.rows and len(window.rows) else None
    base = {
        "window_start": window.start,
        "window_end": window.end,
        "rows": len(window.rows),
        "model_name": champion.name,
        "model_version": champion.version,
        "checked_at": now,
        "data_start": window.start if served is None else served.min(),
    }
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
    table = delta.read(
        config.storage.table_uri(config.monitor.drift_reports_table),
        config.storage.storage_options,
        ["window_start", "window_end", "detector", "is_drift", "data_start"],
        pc.field("model_version") == version,
    )
    if table is None or table.num_rows == 0:
        return {}
    frame = table.to_pandas()
    if "data_start" not in frame:  # reports written before data_start existed
        frame["data_start"] = frame["window_start"]
    frame["data_start"] = frame["data_start"].fillna(frame["window_start"])
    frame["kind"] = (frame["detector"] == PERFORMANCE).map({True: PERFORMANCE, False: "traffic"})
    grouped = frame.groupby(["kind", "window_end"]).agg(
        drift=("is_drift", lambda s: None if s.isna().all() else bool(s.fillna(False).any())),
        start=("data_start", "min"),
    )
    return {
        kind: [(row.drift, row.start.to_pydatetime()) for row in part.itertuples()]
        for kind, part in grouped.sort_index().groupby(level="kind")
    }


def log_to_mlflow(config: LakeloopConfig, champion: Champion, reports: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_experiment(f"{config.mlflow.experiment}-monitor")
    with mlflow.start_run(
        run_name=f"monitor-v{champion.version}",
        tags={"lakeloop.job": "monitor", "lakeloop.model_version": champion.version},
    ):
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


def summaries(windows: list[drift_policy.Window], reports: list[dict], traffic: bool) -> list[dict]:
    def drifted(window: drift_policy.Window) -> bool | None:
        decided = [
            r["is_drift"]
            for r in reports
            if r["window_end"] == window.end and (r["detector"] != PERFORMANCE) == traffic and r["is_drift"] is not None
        ]
        return any(decided) if decided else None

    return [{"start": str(w.start), "end": str(w.end), "rows": len(w.rows), "drift": drifted(w)} for w in windows]
