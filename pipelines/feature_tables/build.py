"""A training set built from label events and feature views, point-in-time correct.

The label table and every view's table are read at one pinned version each; each view is joined on
the cluster (feature_tables.join) in turn; the result replaces dataset.table as one new Delta version,
and a row of features.builds_table records that version beside every source's. A training run on
that version logs those sources as its lineage (`sources_of`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.core.config import FeatureViewConfig, LakeloopConfig
from pipelines.core.errors import ConfigError, LakeloopError
from pipelines.core.point_in_time import ViewJoin
from pipelines.feature_tables.join import join_view

BUILD_SCHEMA = pa.schema(
    [
        ("training_set", pa.string()),
        ("version", pa.int64()),
        ("rows", pa.int64()),
        ("sources", pa.string()),  # JSON: table URI -> version
        ("built_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class Build:
    training_set: str  # the table's URI
    version: int
    rows: int
    sources: dict[str, int]  # every table read, at the version read

    def describe(self) -> str:
        read = ", ".join(f"{uri} version {version}" for uri, version in self.sources.items())
        return f"built {self.training_set} version {self.version} ({self.rows} rows) from {read}"


def view_join(view: FeatureViewConfig) -> ViewJoin:
    ttl = timedelta(seconds=view.ttl_s) if view.ttl_s else None
    return ViewJoin(tuple(view.keys), view.event_time, tuple(view.columns), view.created_time, ttl)


def needed_columns(join: ViewJoin) -> list[str]:
    """What a join reads of a view's table: its keys, times and feature columns."""
    return list(dict.fromkeys([*join.keys, join.event_time, *filter(None, [join.created_time]), *join.columns]))


def opened(table: delta.Table, needed: list[str], what: str) -> tuple[int, pa.Schema]:
    """The table's current version and schema, once the schema holds `needed` (else an error naming them)."""
    current = table.open()
    table.require_readable(current)
    schema = delta.arrow_dataset(current).schema
    missing = [c for c in needed if c not in schema.names]
    if missing:
        raise ConfigError(f"{what} ({table.uri}) has no column {', '.join(missing)}")
    return current.version(), schema


def _same_key_types(events: pa.Schema, view: pa.Schema, keys: list[str], name: str, what: str) -> None:
    """A key that is a number on one side and text on the other would never match: refused, named."""
    for key in keys:
        if key not in events.names:
            raise ConfigError(f"features.views '{name}': key '{key}' is not a column of {what}")
        kinds = [
            pa.types.is_integer(t) or pa.types.is_floating(t) for t in (events.field(key).type, view.field(key).type)
        ]
        if kinds[0] != kinds[1]:
            raise ConfigError(
                f"features.views '{name}': key '{key}' is {view.field(key).type} in the view but "
                f"{events.field(key).type} in {what}"
            )


@dataclass(frozen=True)
class PinnedView:
    join: ViewJoin
    table: delta.Table
    version: int
    columns: list[str]  # what the join reads of it


def pin_views(config: LakeloopConfig, events: pa.Schema, what: str) -> list[PinnedView]:
    """Every view's table at its current version, each checked (columns, key types against the
    `events` they will be joined to, named `what`) before any row is read."""
    tables, pinned = delta.tables(config), []
    for view in config.features.views:
        join = view_join(view)
        needed = needed_columns(join)
        table = tables.named(view.table)
        version, schema = opened(table, needed, f"features.views '{view.name}'")
        _same_key_types(events, schema, view.keys, view.name, what)
        pinned.append(PinnedView(join, table, version, needed))
    return pinned


def _check_provided(config: LakeloopConfig, label_schema: pa.Schema) -> None:
    """Every dataset column comes from the label table or a view."""
    provided = {*label_schema.names, *config.features.looked_up}
    missing = [c for c in config.dataset.required_columns if c not in provided]
    if missing:
        raise ConfigError(
            f"dataset column {', '.join(missing)}: neither features.labels.table nor any features.views provides it"
        )


def build_training_set(config: LakeloopConfig) -> Build:
    features = config.features
    if not features.views or features.labels is None:
        raise ConfigError("features.views is empty: there is nothing to join (dataset.table is one wide table)")
    tables, labels = delta.tables(config), features.labels
    source = tables.named(labels.table)
    version, label_schema = opened(source, [labels.event_time, *features.entity_keys], "features.labels.table")
    views = pin_views(config, label_schema, "features.labels.table")
    _check_provided(config, label_schema)
    data = source.ray_read(version)
    for view in views:
        data = join_view(
            data, view.table.ray_read(view.version, view.columns), labels.event_time, view.join, features.buckets
        )
    target = tables.named(config.dataset.table)
    built = target.ray_overwrite(data)
    build = Build(
        target.uri, built, target.open(built).count(), {source.uri: version} | {v.table.uri: v.version for v in views}
    )
    _record(config, build)
    return build


def _record(config: LakeloopConfig, build: Build) -> None:
    row = {
        "training_set": build.training_set,
        "version": build.version,
        "rows": build.rows,
        "sources": json.dumps(build.sources),
        "built_at": datetime.now(UTC),
    }
    delta.tables(config).named(config.features.builds_table).append(pa.Table.from_pylist([row], BUILD_SCHEMA))


def sources_of(config: LakeloopConfig, training_set: str, version: int) -> dict[str, int]:
    """The sources a build of `training_set` at `version` read (empty: not a build)."""
    builds = delta.tables(config).named(config.features.builds_table)
    found = builds.read(
        ["sources"],
        (pc.field("training_set") == training_set) & (pc.field("version") == pa.scalar(version, pa.int64())),
    )
    if found is None or found.num_rows == 0:
        return {}
    try:
        return {uri: int(v) for uri, v in json.loads(found.column("sources")[-1].as_py()).items()}
    except (ValueError, AttributeError) as exc:
        raise LakeloopError(f"{builds.uri}: a build record of {training_set} is unreadable: {exc}") from None


def is_stale(config: LakeloopConfig) -> bool:
    """With feature views: whether the label table or a view moved since the last build (or there was
    none), so that a training run must build its training set first."""
    if not config.features.views or config.features.labels is None:
        return False
    built = last_build(config)
    if built is None:
        return True
    tables = delta.tables(config)
    names = [config.features.labels.table, *(view.table for view in config.features.views)]
    current = {table.uri: table.version() for table in map(tables.named, names)}
    return current != built["sources"]


def last_build(config: LakeloopConfig) -> dict | None:
    """The newest build recorded in features.builds_table (None: never built)."""
    builds = delta.tables(config).named(config.features.builds_table).read()
    if builds is None or builds.num_rows == 0:
        return None
    newest = builds.sort_by("built_at").to_pylist()[-1]
    return {**newest, "sources": json.loads(newest["sources"]), "built_at": str(newest["built_at"])}
