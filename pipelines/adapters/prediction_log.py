"""The prediction log, one definition for serving, the monitor, training and tests: the schemas and
row format of the Delta tables `predictions` (what was served: request id, row, time, model, the
features, the output), `shadow_predictions` (what the model that did not answer said about the same
rows, while the online gate compares two), `feedback` (labels sent to /feedback) and their dead-letter
tables. The served rows joined with their labels live in pipelines.training.labelled_feedback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pyarrow as pa

from pipelines.core.config import DatasetConfig

REQUEST_ID, ROW, SERVED_AT, RECEIVED_AT, UPDATE = "request_id", "row", "served_at", "received_at", "update"
MODEL_NAME, MODEL_VERSION, PREDICTION, OUTPUT, LABEL = "model_name", "model_version", "prediction", "output", "label"
ROLE, ERROR = "role", "error"
KEY = [REQUEST_ID, ROW]
UTC_MICROS = pa.timestamp("us", tz="UTC")


def feature_field(name: str, kind: str) -> pa.Field:
    """How a served feature is logged: numeric as float64, categorical as string."""
    return pa.field(name, pa.float64() if kind == "numeric" else pa.string())


# Which row of which request, when, by which model: the head of both the served and the shadow log.
SCORED_BY = [
    pa.field(REQUEST_ID, pa.string(), nullable=False),
    pa.field(ROW, pa.int32(), nullable=False),
    pa.field(SERVED_AT, UTC_MICROS, nullable=False),
    pa.field(MODEL_NAME, pa.string(), nullable=False),
    pa.field(MODEL_VERSION, pa.string(), nullable=False),
]
ANSWER = [pa.field(PREDICTION, pa.string()), pa.field(OUTPUT, pa.string())]  # output: the row's whole answer, JSON


def predictions_schema(dataset: DatasetConfig, keys: Sequence[str] = ()) -> pa.Schema:
    """The served rows: who scored them, the entity keys a request sent (as text; with feature views),
    the features the model saw (looked up or sent), and the answer."""
    key_fields = [pa.field(k, pa.string()) for k in keys if k not in dataset.feature_names]
    return pa.schema([*SCORED_BY, *key_fields, *(feature_field(f.name, f.kind) for f in dataset.features), *ANSWER])


SHADOW_SCHEMA = pa.schema(
    [
        *SCORED_BY,
        *ANSWER,
        pa.field(ROLE, pa.string(), nullable=False),  # candidate, guard, or champion (a canary answered)
        pa.field(ERROR, pa.string()),  # why the model could not score the row (output null)
    ]
)  # no features: the served row in `predictions` (same request id and row) holds them


def shadow_row(
    request_id: str, row: int, model_name: str, version: str, served_at: datetime, output: dict | str, role: str
) -> dict:
    """One row as a model scored it in shadow (`output`), or the reason it could not (a string)."""
    failed = isinstance(output, str)
    return {
        REQUEST_ID: request_id,
        ROW: row,
        SERVED_AT: served_at,
        MODEL_NAME: model_name,
        MODEL_VERSION: version,
        PREDICTION: None if failed else str(output.get(PREDICTION)),
        OUTPUT: None if failed else json.dumps(output, default=str),
        ROLE: role,
        ERROR: output[:2000] if failed else None,
    }


FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field(REQUEST_ID, pa.string(), nullable=False),
        pa.field(ROW, pa.int32(), nullable=False),
        pa.field(RECEIVED_AT, UTC_MICROS, nullable=False),
        pa.field(LABEL, pa.string(), nullable=False),
        pa.field(UPDATE, pa.bool_()),  # the label replaces the row's earlier one (null in tables from before it)
    ]
)


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("table_uri", pa.string(), nullable=False),
        pa.field("failed_at", UTC_MICROS, nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("row_json", pa.string(), nullable=False),  # the row as it was served, to replay or inspect
    ]
)


def dead_letter_row(uri: str, row: dict, reason: str) -> dict:
    return {
        "table_uri": uri,
        "failed_at": datetime.now(UTC),
        "reason": reason[:2000],
        "row_json": json.dumps(row, default=str),
    }


def prediction_rows(
    request_id: str,
    model_name: str,
    model_version: str,
    served_at: datetime,
    features: Mapping[str, Sequence],
    outputs: list[dict],
    dataset: DatasetConfig,
) -> list[dict]:
    """Log rows of one served request from its feature columns (name -> one value per output row):
    numeric features as floats, categorical ones as strings, missing values as null, the whole
    output as JSON."""
    numeric = set(dataset.numeric)
    names = list(features)
    columns = [[_logged(value, name in numeric) for value in features[name]] for name in names]
    return [
        {
            REQUEST_ID: request_id,
            ROW: i,
            SERVED_AT: served_at,
            MODEL_NAME: model_name,
            MODEL_VERSION: model_version,
            **dict(zip(names, values, strict=True)),
            PREDICTION: str(out.get(PREDICTION)),
            OUTPUT: json.dumps(out, default=str),
        }
        for i, (out, *values) in enumerate(zip(outputs, *columns, strict=True))
    ]


def _logged(value: object, numeric: bool) -> object:
    if value is None or value != value:  # None or NaN
        return None
    return float(value) if numeric else str(value)


def feedback_row(request_id: str, row: int, label: object, received_at: datetime, update: bool = False) -> dict:
    return {REQUEST_ID: request_id, ROW: row, RECEIVED_AT: received_at, LABEL: str(label), UPDATE: update}
