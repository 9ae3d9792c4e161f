"""Rows to score joined to the feature views point-in-time, as a training set is built: each row gets
each view's values as they were known at the row's own event time (features.labels.event_time), so a
batch scored today over last month's events sees what a model serving then would have seen.

An input small enough to score in the driver is joined there (each view read at its pinned version,
only the rows of the input's entities); a larger one on the cluster (feature_tables.join), and kept
in the object store before the scoring actors start (the join's tasks then never wait behind them).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import ConfigError
from pipelines.core.point_in_time import as_of_join
from pipelines.feature_tables.build import PinnedView, pin_views
from pipelines.feature_tables.join import join_view

WHAT = "the input"


def needs_views(config: LakeloopConfig, columns: list[str]) -> bool:
    """Whether rows with these columns lack what the views provide (and so are joined to them)."""
    return bool(config.features.views) and any(c not in columns for c in config.features.looked_up)


def _pinned(config: LakeloopConfig, schema: pa.Schema) -> list[PinnedView]:
    event_time = config.features.labels.event_time  # a config with views has labels (config.py)
    if event_time not in schema.names:
        raise ConfigError(
            f"the input has no column {event_time} (features.labels.event_time): each row's event time is "
            "needed to join the feature views point-in-time (or send the views' columns themselves)"
        )
    return pin_views(config, schema, WHAT)


def _rows_of(view: PinnedView, events: pa.Table) -> pa.Table:
    """The view's rows of the input's entities only (a one-key view; all rows for a composite key)."""
    keys = list(view.join.keys)
    dataset = delta.arrow_dataset(view.table.open(view.version))
    if len(keys) == 1:
        wanted = pc.unique(events.column(keys[0]).drop_null())
        return dataset.to_table(columns=view.columns, filter=pc.field(keys[0]).isin(wanted))
    return dataset.to_table(columns=view.columns)


def joined_table(config: LakeloopConfig, events: pa.Table) -> pa.Table:
    """`events` (in their order) with every view's columns as of each row's event time."""
    frame, event_time = events.to_pandas(), config.features.labels.event_time
    for view in _pinned(config, events.schema):
        frame = as_of_join(frame, _rows_of(view, events).to_pandas(), event_time, view.join)
    return pa.Table.from_pandas(frame, preserve_index=False)


def joined_dataset(config: LakeloopConfig, events: ray.data.Dataset) -> ray.data.Dataset:
    """`events` with every view's columns as of each row's event time, joined on the cluster and
    materialized (rows in bucket order, not the input's)."""
    schema = events.schema().base_schema
    features, event_time = config.features, config.features.labels.event_time
    for view in _pinned(config, schema):
        features_data = view.table.ray_read(view.version, view.columns)
        events = join_view(events, features_data, event_time, view.join, features.buckets)
    return events.materialize()
