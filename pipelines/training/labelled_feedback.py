"""Served rows joined with the labels clients sent to /feedback: the input of performance monitoring
and, when `train.source` asks for it, of retraining (the labelled-feedback training table).

A row's first label stands; a later one replaces it only when sent with `"update": true` (the newest
such update wins). A label that is not one of the dataset's classes (or not a finite number, for
regression) never joins: it was planted in the table, or the classes changed since it was sent. The
monitor moves such labels to the feedback table's dead-letter table, exactly once (`quarantine`)."""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import (
    DEAD_LETTER_SCHEMA,
    FEEDBACK_SCHEMA,
    KEY,
    LABEL,
    MODEL_VERSION,
    RECEIVED_AT,
    REQUEST_ID,
    ROW,
    SERVED_AT,
    UPDATE,
    UTC_MICROS,
    dead_letter_row,
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


log = logging.getLogger(__name__)

QUARANTINE_APP = "lakeloop-monitor-invalid-labels"  # the dead-letter commits' app transaction id


@dataclass
class LabelJoin:
    """The standing labels joined with their served rows (`joined`), those whose row is not in the
    predictions table (yet) (`unjoined`), and those no model can learn from (`invalid`, with a reason)."""

    joined: pd.DataFrame
    unjoined: pa.Table
    invalid: pa.Table


def standing_labels(feedback: pa.Table) -> pa.Table:
    """Per served row, the label that stands: the newest sent with update=true, else the first."""
    frame = feedback.to_pandas().sort_values(RECEIVED_AT, kind="stable")
    update = frame[UPDATE].fillna(False).astype(bool) if UPDATE in frame else pd.Series(False, index=frame.index)
    updated = frame[update].drop_duplicates(KEY, keep="last")
    first = frame.drop_duplicates(KEY, keep="first")
    first = first[~first.set_index(KEY).index.isin(updated.set_index(KEY).index)]
    stands = pd.concat([first, updated]).sort_values(RECEIVED_AT, kind="stable")
    return pa.Table.from_pandas(stands, schema=feedback.schema, preserve_index=False)


def label_problem(dataset: DatasetConfig, label: object) -> str | None:
    """Why a logged label cannot be learned from, or None."""
    if dataset.task == "classification":
        if str(label) not in dataset.class_index:
            return f"label: {label!r} is not one of the classes {dataset.classes}"
        return None
    try:
        finite = math.isfinite(float(label))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        finite = False
    return None if finite else f"label: {label!r} is not a finite number"


def _split_valid(dataset: DatasetConfig, labels: pa.Table) -> tuple[pa.Table, pa.Table]:
    problems = [label_problem(dataset, value) for value in labels.column(LABEL).to_pylist()]
    bad = pa.array([p is not None for p in problems], pa.bool_())
    invalid = labels.filter(bad).append_column("reason", pa.array([p for p in problems if p], pa.string()))
    return labels.filter(pc.invert(bad)), invalid


def join_labels(config: LakeloopConfig, feedback: pa.Table, history: pa.Table | None = None) -> LabelJoin:
    """The standing labels among `feedback` joined with the rows they label, oldest label first.
    `history`: every label of the same rows (a superset of `feedback`, e.g. the whole feedback table
    filtered to these request ids), so that a label that does not stand given earlier ones is dropped.
    The joined columns: request_id, row, served_at, received_at, model_version, the features, the
    label, and any other column `feedback` carries (e.g. its commit version)."""
    dataset, tables = config.dataset, delta.tables(config)
    extra = [c for c in feedback.column_names if c not in (*KEY, RECEIVED_AT, LABEL, UPDATE)]
    columns = [*KEY, SERVED_AT, RECEIVED_AT, MODEL_VERSION, *dataset.feature_names, dataset.label, *extra]
    empty = pd.DataFrame(columns=columns)
    if feedback.num_rows == 0:
        return LabelJoin(empty, feedback, feedback.append_column("reason", pa.array([], pa.string())))
    feedback, invalid = _split_valid(dataset, feedback)  # an invalid label never stands, not even as an update
    history = feedback if history is None else _split_valid(dataset, history)[0]
    stands = standing_labels(history).select([*KEY, RECEIVED_AT])
    labels = feedback.join(stands, keys=[*KEY, RECEIVED_AT], join_type="left semi")
    served = tables.predictions.read(
        [*KEY, SERVED_AT, MODEL_VERSION, *dataset.feature_names],
        pc.field(REQUEST_ID).isin(pc.unique(labels.column(REQUEST_ID))),
    )
    if served is None:
        return LabelJoin(empty, labels, invalid)
    joined = served.join(labels, keys=KEY, join_type="inner")
    unjoined = labels.join(
        served.select(KEY).append_column("_served", pa.array([True] * served.num_rows, pa.bool_())),
        keys=KEY,
        join_type="left outer",
    )
    unjoined = unjoined.filter(pc.is_null(unjoined.column("_served"))).drop_columns(["_served"])
    label = pc.cast(joined.column(LABEL), label_type(dataset))  # every one passed label_problem
    joined = joined.drop_columns([LABEL]).append_column(dataset.label, label)
    frame = joined.select(columns).to_pandas().sort_values(RECEIVED_AT, kind="stable").reset_index(drop=True)
    return LabelJoin(frame, unjoined, invalid)


def quarantine(config: LakeloopConfig, invalid: pa.Table) -> int:
    """Dead-letter invalid labels that carry their feedback commit version (the monitor's reads), each
    once: the commit records the newest version it covers (an app transaction), and a label of a
    version already covered is not written again. Returns how many were written."""
    if invalid.num_rows == 0 or delta.COMMIT_VERSION not in invalid.column_names:
        return 0
    feedback = delta.tables(config).feedback
    letters = feedback.dead_letter()
    covered = letters.transaction_version(QUARANTINE_APP) if letters.exists() else None
    versions = invalid.column(delta.COMMIT_VERSION)
    if covered is not None:
        invalid = invalid.filter(pc.greater(versions, covered))
    if invalid.num_rows == 0:
        return 0
    rows = [
        dead_letter_row(feedback.uri, {k: row[k] for k in (*KEY, RECEIVED_AT, LABEL)}, row["reason"])
        for row in invalid.to_pylist()
    ]
    newest = pc.max(invalid.column(delta.COMMIT_VERSION)).as_py()
    letters.append(pa.Table.from_pylist(rows, schema=DEAD_LETTER_SCHEMA), transaction=(QUARANTINE_APP, newest))
    log.warning("%d feedback label(s) cannot be learned from; moved to %s", len(rows), letters.uri)
    return len(rows)


def labelled_rows(config: LakeloopConfig) -> pd.DataFrame:
    """Every served row that has a standing label, oldest label first: the training table's source.
    Invalid labels are left out (the monitor dead-letters them)."""
    feedback = delta.tables(config).feedback.read()
    result = join_labels(config, feedback if feedback is not None else FEEDBACK_SCHEMA.empty_table())
    if result.invalid.num_rows:
        log.warning("%d feedback label(s) left out: %s", result.invalid.num_rows, result.invalid["reason"][0])
    return result.joined


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
