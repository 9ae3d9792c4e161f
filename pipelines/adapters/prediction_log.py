"""The prediction log, one definition for serving, the monitor, training and tests: the schemas and
row format of the Delta tables `predictions` (what was served: request id, row, time, model, the
features, the output) and `feedback` (labels sent to /feedback), and the served rows joined with
their labels (the input of performance monitoring and, when `train.source` asks for it, of
retraining). A row labelled twice keeps its newest label.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.core.config import DatasetConfig, LakeloopConfig
from pipelines.core.errors import LakeloopError

REQUEST_ID, ROW, SERVED_AT, RECEIVED_AT = "request_id", "row", "served_at", "received_at"
MODEL_NAME, MODEL_VERSION, PREDICTION, OUTPUT, LABEL = "model_name", "model_version", "prediction", "output", "label"
KEY = [REQUEST_ID, ROW]
UTC_MICROS = pa.timestamp("us", tz="UTC")


class NoLabelledRows(LakeloopError):
    """train.source asks for labelled feedback and no served row has a label yet."""


def feature_field(name: str, kind: str) -> pa.Field:
    """How a served feature is logged: numeric as float64, categorical as string."""
    return pa.field(name, pa.float64() if kind == "numeric" else pa.string())


def predictions_schema(dataset: DatasetConfig) -> pa.Schema:
    return pa.schema(
        [
            pa.field(REQUEST_ID, pa.string(), nullable=False),
            pa.field(ROW, pa.int32(), nullable=False),
            pa.field(SERVED_AT, UTC_MICROS, nullable=False),
            pa.field(MODEL_NAME, pa.string(), nullable=False),
            pa.field(MODEL_VERSION, pa.string(), nullable=False),
            *(feature_field(f.name, f.kind) for f in dataset.features),
            pa.field(PREDICTION, pa.string()),
            pa.field(OUTPUT, pa.string()),  # the full model output for the row, as JSON
        ]
    )


FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field(REQUEST_ID, pa.string(), nullable=False),
        pa.field(ROW, pa.int32(), nullable=False),
        pa.field(RECEIVED_AT, UTC_MICROS, nullable=False),
        pa.field(LABEL, pa.string(), nullable=False),
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


def dead_letter_uri(uri: str) -> str:
    """Where rows that can never be written to `uri` go, with the reason."""
    return f"{uri.rstrip('/')}_dead_letter"


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


def feedback_row(request_id: str, row: int, label: object, received_at: datetime) -> dict:
    return {REQUEST_ID: request_id, ROW: row, RECEIVED_AT: received_at, LABEL: str(label)}


def label_type(dataset: DatasetConfig) -> pa.DataType:
    """The label's type in a training table: int classes stay ints, regression targets are floats."""
    if dataset.task == "regression":
        return pa.float64()
    return pa.int64() if all(isinstance(c, int) for c in dataset.classes or []) else pa.string()


def _latest_labels(feedback: pa.Table) -> pa.Table:
    frame = feedback.to_pandas().sort_values(RECEIVED_AT, kind="stable")
    newest = frame.drop_duplicates(KEY, keep="last")
    return pa.Table.from_pandas(newest, schema=feedback.schema, preserve_index=False)


def join_labels(config: LakeloopConfig, feedback: pa.Table) -> tuple[pd.DataFrame, pa.Table]:
    """Labels joined with the rows they label (a row labelled twice keeps its newest label), oldest label
    first; and the labels whose served row is not in the predictions table (yet). The joined columns:
    request_id, row, served_at, received_at, model_version, the features, the label, and any other
    column `feedback` carries (e.g. its commit version)."""
    dataset, storage, log = config.dataset, config.storage, config.serving.prediction_log
    extra = [c for c in feedback.column_names if c not in (*KEY, RECEIVED_AT, LABEL)]
    columns = [*KEY, SERVED_AT, RECEIVED_AT, MODEL_VERSION, *dataset.feature_names, dataset.label, *extra]
    if feedback.num_rows == 0:
        return pd.DataFrame(columns=columns), feedback
    labels = _latest_labels(feedback)
    served = delta.read(
        storage.table_uri(log.predictions_table),
        storage.storage_options,
        [*KEY, SERVED_AT, MODEL_VERSION, *dataset.feature_names],
        pc.field(REQUEST_ID).isin(pc.unique(labels.column(REQUEST_ID))),
    )
    if served is None:
        return pd.DataFrame(columns=columns), labels
    joined = served.join(labels, keys=KEY, join_type="inner")
    unjoined = labels.join(
        served.select(KEY).append_column("_served", pa.array([True] * served.num_rows, pa.bool_())),
        keys=KEY,
        join_type="left outer",
    )
    unjoined = unjoined.filter(pc.is_null(unjoined.column("_served"))).drop_columns(["_served"])
    try:
        label = pc.cast(joined.column(LABEL), label_type(dataset))
    except pa.ArrowInvalid as exc:
        raise LakeloopError(
            f"{storage.table_uri(log.feedback_table)}: column '{LABEL}' holds values that are not "
            f"{label_type(dataset)}: {exc}"
        ) from None
    joined = joined.drop_columns([LABEL]).append_column(dataset.label, label)
    frame = joined.select(columns).to_pandas().sort_values(RECEIVED_AT, kind="stable").reset_index(drop=True)
    return frame, unjoined


def labelled_rows(config: LakeloopConfig) -> pd.DataFrame:
    """Every served row that has a label (its newest), oldest label first: the training table's source."""
    storage, log = config.storage, config.serving.prediction_log
    feedback = delta.read(storage.table_uri(log.feedback_table), storage.storage_options)
    return join_labels(config, feedback if feedback is not None else FEEDBACK_SCHEMA.empty_table())[0]


def training_table(rows: pd.DataFrame, dataset: DatasetConfig, like: pa.Schema | None = None) -> pa.Table:
    """Labelled rows in the shape of the source table: the features, the label, and the event time
    (when the row was served). With `like` (the dataset table's schema), columns take its types
    where the values allow, so the two tables can be read as one."""
    schema = pa.schema(
        [
            *(feature_field(f.name, f.kind) for f in dataset.features),
            pa.field(dataset.label, label_type(dataset)),
            pa.field(dataset.event_time, UTC_MICROS),
        ]
    )
    frame = rows.rename(columns={SERVED_AT: dataset.event_time})
    key = dataset.split.key
    if dataset.split.strategy == "hash" and key and key not in schema.names:  # served rows have no such column
        schema = schema.append(pa.field(key, pa.string()))
        frame = frame.assign(**{key: frame[REQUEST_ID] + ":" + frame[ROW].astype(str)})
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    for index, name in enumerate(table.column_names):
        target = like.field(name).type if like is not None and name in like.names else None
        if target is not None and target != table.schema.field(name).type:
            # e.g. 2.5 served for an int column: keep the served type, the reader coerces
            with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
                table = table.set_column(index, name, pc.cast(table.column(name), target))
    return table


def refresh_training_table(config: LakeloopConfig) -> str:
    """Rewrite the labelled-feedback training table from the logs (a new Delta version, so a
    training run pins exactly what it read); returns its URI."""
    rows = labelled_rows(config)
    storage, log = config.storage, config.serving.prediction_log
    if rows.empty:
        raise NoLabelledRows(f"no row of '{log.predictions_table}' has a label in '{log.feedback_table}' yet")
    uri = storage.table_uri(log.labelled_table)
    like = delta.schema(config.table_uri, storage.storage_options)  # the events table's types, if it exists
    delta.overwrite(uri, training_table(rows, config.dataset, like), storage.storage_options)
    return uri
