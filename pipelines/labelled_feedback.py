"""Served rows joined with the labels sent to /feedback: the input of performance monitoring and,
when `train.source` asks for it, of retraining.

The predictions table holds what was served (features, served_at); the feedback table holds
(request_id, row, label, received_at). A row labelled twice keeps its newest label.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

from pipelines import delta_tables
from pipelines.config import DatasetConfig, LakeloopConfig
from pipelines.errors import LakeloopError

KEY = ["request_id", "row"]


class NoLabelledRows(LakeloopError):
    """train.source asks for labelled feedback and no served row has a label yet."""

RECEIVED_AT = "received_at"


def label_type(dataset: DatasetConfig) -> pa.DataType:
    """The label's type in a training table: int classes stay ints, regression targets are floats."""
    if dataset.task == "regression":
        return pa.float64()
    return pa.int64() if all(isinstance(c, int) for c in dataset.classes or []) else pa.string()


def _latest_labels(feedback: pa.Table) -> pa.Table:
    frame = feedback.to_pandas().sort_values(RECEIVED_AT, kind="stable")
    newest = frame.drop_duplicates(KEY, keep="last")
    return pa.Table.from_pandas(newest, schema=feedback.schema, preserve_index=False)


def labelled_rows(config: LakeloopConfig, received_after: datetime | None = None) -> pd.DataFrame:
    """Served rows with their labels (received after `received_after`), oldest label first.
    Columns: request_id, row, served_at, received_at, model_version, the features, the label."""
    dataset, storage = config.dataset, config.storage
    log = config.serving.prediction_log
    feedback_uri, predictions_uri = storage.table_uri(log.feedback_table), storage.table_uri(log.predictions_table)
    columns = [*KEY, "served_at", RECEIVED_AT, "model_version", *dataset.feature_names, dataset.label]
    if not (DeltaTable.is_deltatable(feedback_uri) and DeltaTable.is_deltatable(predictions_uri)):
        return pd.DataFrame(columns=columns)
    options = storage.storage_options or None
    condition = None if received_after is None else (
        pc.field(RECEIVED_AT) > pa.scalar(received_after, pa.timestamp("us", tz="UTC")))
    feedback = _latest_labels(DeltaTable(feedback_uri, storage_options=options).to_pyarrow_dataset().to_table(
        filter=condition))
    if feedback.num_rows == 0:
        return pd.DataFrame(columns=columns)
    served = DeltaTable(predictions_uri, storage_options=options).to_pyarrow_dataset().to_table(
        columns=[*KEY, "served_at", "model_version", *dataset.feature_names],
        filter=pc.field("request_id").isin(pc.unique(feedback.column("request_id"))),
    )
    joined = served.join(feedback, keys=KEY, join_type="inner")
    try:
        label = pc.cast(joined.column("label"), label_type(dataset))
    except pa.ArrowInvalid as exc:
        raise LakeloopError(f"{feedback_uri}: column 'label' holds values that are not {label_type(dataset)}: {exc}") from None
    joined = joined.drop_columns(["label"]).append_column(dataset.label, label)
    return joined.select(columns).to_pandas().sort_values(RECEIVED_AT, kind="stable").reset_index(drop=True)


def training_table(rows: pd.DataFrame, dataset: DatasetConfig, like: pa.Schema | None = None) -> pa.Table:
    """Labelled rows in the shape of the source table: the features, the label, and the event time
    (when the row was served). With `like` (the dataset table's schema), columns take its types
    where the values allow, so the two tables can be read as one."""
    fields = [pa.field(f.name, pa.float64() if f.kind == "numeric" else pa.string()) for f in dataset.features]
    schema = pa.schema([*fields, pa.field(dataset.label, label_type(dataset)),
                        pa.field(dataset.event_time, pa.timestamp("us", tz="UTC"))])
    frame = rows.rename(columns={"served_at": dataset.event_time})
    key = dataset.split.key
    if dataset.split.strategy == "hash" and key and key not in schema.names:  # served rows have no such column
        schema = schema.append(pa.field(key, pa.string()))
        frame = frame.assign(**{key: frame["request_id"] + ":" + frame["row"].astype(str)})
    frame = frame[schema.names]
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    for index, name in enumerate(table.column_names):
        target = like.field(name).type if like is not None and name in like.names else None
        if target is not None and target != table.schema.field(name).type:
            try:
                table = table.set_column(index, name, pc.cast(table.column(name), target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass  # e.g. 2.5 served for an int column: keep the served type, the reader coerces
    return table


def refresh_training_table(config: LakeloopConfig) -> str:
    """Rewrite the labelled-feedback training table from the logs (a new Delta version, so a
    training run pins exactly what it read); returns its URI."""
    rows = labelled_rows(config)
    log = config.serving.prediction_log
    if rows.empty:
        raise NoLabelledRows(f"no row of '{log.predictions_table}' has a label in '{log.feedback_table}' yet")
    uri = config.storage.table_uri(log.labelled_table)
    like = None
    if delta_tables.table_exists(config.table_uri, config.storage.storage_options):
        like = delta_tables.arrow_dataset(delta_tables.open_table(config.table_uri, config.storage.storage_options)).schema
    write_deltalake(uri, training_table(rows, config.dataset, like), mode="overwrite", schema_mode="overwrite",
                    storage_options=config.storage.storage_options or None)
    return uri
