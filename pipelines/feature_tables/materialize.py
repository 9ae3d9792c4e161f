"""The online store's values: each view's latest value per entity, as a label event now would see it.

Every view's table is read at one pinned version (columns and key types checked first, as a build
checks them), reduced with the same point-in-time rule as training sets (`latest_as_of`: created time
and TTL included, so a lookup equals the offline as-of value at the materialization's moment), and
written to features.online.store as one new online version."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

from pipelines.adapters import delta
from pipelines.adapters.online_store import Materialized, key_kind, open_store
from pipelines.core.config import FeatureViewConfig, LakeloopConfig
from pipelines.core.errors import ConfigError
from pipelines.core.point_in_time import FEATURE_TIME, latest_as_of
from pipelines.feature_tables.build import needed_columns, opened, view_join


def _online_schema(source: pa.Schema, view: FeatureViewConfig) -> pa.Schema:
    """The online table's: the keys as the view has them, FEATURE_TIME, and the columns (numbers as
    float64: a missing value is NaN, as the join gives it)."""
    columns = [
        pa.field(c, pa.float64()) if pa.types.is_integer(t) or pa.types.is_floating(t) else pa.field(c, t)
        for c, t in ((c, source.field(c).type) for c in view.columns)
    ]
    keys = [source.field(k) for k in view.keys]
    return pa.schema([*keys, pa.field(FEATURE_TIME, pa.timestamp("us", "UTC")), *columns])


def materialize(config: LakeloopConfig, as_of: datetime | None = None) -> list[Materialized]:
    """Write every view's latest values as of `as_of` (default now) to the online store."""
    if not config.features.views:
        raise ConfigError("features.views is empty: there is nothing to materialize")
    at = as_of or datetime.now(UTC)
    tables, pinned = delta.tables(config), []
    for view in config.features.views:  # every view checked before anything is written
        join, table = view_join(view), tables.named(view.table)
        version, schema = opened(table, needed_columns(join), f"features.views '{view.name}'")
        for key in view.keys:
            key_kind(schema.field(key).type, f"features.views '{view.name}' ({table.uri}): key '{key}'")
        pinned.append((view, join, table, version, _online_schema(schema, view)))
    store, written = open_store(config), []
    for view, join, table, version, schema in pinned:
        frame = delta.arrow_dataset(table.open(version)).to_table(columns=needed_columns(join)).to_pandas()
        latest = pa.Table.from_pandas(latest_as_of(frame, join, pd.Timestamp(at)), schema, preserve_index=False)
        written.append(store.write(view, latest, version, at))
    return written
