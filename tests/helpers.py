"""Shared test helpers (importable as tests.helpers)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "conf" / "lakeloop.yaml"


def demo_raw_config(data_root: Path) -> dict:
    """The shipped demo config, with storage under data_root."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["storage"]["root"] = str(data_root)
    return raw


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def served_log(config, frame, start: datetime, rows_per_request: int = 5) -> tuple[pa.Table, pa.Table]:
    """What the Serve app would have logged for these rows: a predictions table (requests of
    `rows_per_request` rows, one second apart) and a feedback table labelling every row with the
    frame's label column, received in the same order."""
    from serve.prediction_log import FEEDBACK_SCHEMA, predictions_schema

    dataset = config.dataset
    served, labels = [], []
    for i, record in enumerate(frame.to_dict(orient="records")):
        request_id, row = f"q{i // rows_per_request}", i % rows_per_request
        at = start + timedelta(seconds=i // rows_per_request)
        served.append({"request_id": request_id, "row": row, "served_at": at,
                       "model_name": config.mlflow.registered_model, "model_version": "1",
                       **{f: (None if record[f] != record[f] else float(record[f]) if f in dataset.numeric
                              else str(record[f])) for f in dataset.feature_names},
                       "prediction": "0", "output": "{}"})
        labels.append({"request_id": request_id, "row": row, "received_at": at + timedelta(hours=1),
                       "label": str(record[dataset.label])})
    return (pa.Table.from_pylist(served, schema=predictions_schema(dataset)),
            pa.Table.from_pylist(labels, schema=FEEDBACK_SCHEMA))
