"""Served rows joined with the labels clients sent to /feedback: the input of performance monitoring
and, when `train.source` asks for it, of retraining (the labelled-feedback training table). A row
labelled twice keeps its newest label."""

from __future__ import annotations

import contextlib

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import (
    FEEDBACK_SCHEMA,
    KEY,
    LABEL,
    MODEL_VERSION,
    RECEIVED_AT,
    REQUEST_ID,
    ROW,
    SERVED_AT,
    UTC_MICROS,
    feature_field,
)
from pipelines.core.config import DatasetConfig, LakeloopConfig
from pipelines.core.errors import LakeloopError


class NoLabelledRows(LakeloopError):
    """train.source asks for labelled feedback and no served row has a label yet."""


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
    dataset, tables = config.dataset, delta.tables(config)
    extra = [c for c in feedback.column_names if c not in (*KEY, RECEIVED_AT, LABEL)]
    columns = [*KEY, SERVED_AT, RECEIVED_AT, MODEL_VERSION, *dataset.feature_names, dataset.label, *extra]
    if feedback.num_rows == 0:
        return pd.DataFrame(columns=columns), feedback
    labels = _latest_labels(feedback)
    served = tables.predictions.read(
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
            f"{tables.feedback.uri}: column '{LABEL}' holds values that are not {label_type(dataset)}: {exc}"
        ) from None
    joined = joined.drop_columns([LABEL]).append_column(dataset.label, label)
    frame = joined.select(columns).to_pandas().sort_values(RECEIVED_AT, kind="stable").reset_index(drop=True)
    return frame, unjoined


def labelled_rows(config: LakeloopConfig) -> pd.DataFrame:
    """Every served row that has a label (its newest), oldest label first: the training table's source."""
    feedback = delta.tables(config).feedback.read()
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
    tables, log = delta.tables(config), config.serving.prediction_log
    if rows.empty:
        raise NoLabelledRows(f"no row of '{log.predictions_table}' has a label in '{log.feedback_table}' yet")
    like = tables.events.schema()  # the events table's types, if it exists
    tables.labelled.overwrite(training_table(rows, config.dataset, like))
    return tables.labelled.uri
