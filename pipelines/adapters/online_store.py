"""The online store: each feature view's latest values per entity, written by `lakeloop features
materialize` and looked up by the serving replicas. Two stores, one interface (features.online.store):

- delta (the embedded default): the table <table_prefix><view> under storage.root, replaced as one new
  Delta version by each materialization. A replica reads the whole table into memory (a dict from
  entity key to row) and reads it again when its version moves: a lookup is a dict access, no I/O.
- redis: one string per entity under a key that names the view and the materialization's version, and
  a pointer naming the current version, moved only once every entity is written (a replica never sees
  half a materialization); the previous version's keys expire a minute later. Replicas on any node
  read the pointer every refresh interval and MGET the entities of each request.

A key is the tuple of a view's key columns; each is an integer or text (its type in the online table,
which a request's key must match). A looked-up value is numeric (float, NaN when missing) or not
(object, None when missing), as the request validator makes a request's columns.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import numpy as np
import pyarrow as pa

from pipelines.adapters import delta
from pipelines.core.config import FeatureViewConfig, LakeloopConfig
from pipelines.core.errors import ConfigError, LakeloopError
from pipelines.core.point_in_time import FEATURE_TIME

OLD_VERSION_GRACE_S = 60  # redis: a replaced version's keys live this long (a replica mid-request still reads them)
WRITE_CHUNK = 10_000  # redis: entities per pipelined write

Key = tuple  # one entity: its key columns' values, in the view's key order


class OnlineStoreError(LakeloopError):
    """The store cannot be reached or holds something lakeloop did not write."""


@dataclass(frozen=True)
class Materialized:
    view: str
    store: str  # where: the Delta table's URI, or the Redis key of the view's pointer
    version: int  # the online version this materialization made
    entities: int
    source_version: int  # the view's table, at the version read
    as_of: str  # values as a label event at this moment would see them


@dataclass(frozen=True)
class Found:
    """What a lookup of n keys found: per column n values (missing where not found), which were found,
    and each found value's age in seconds (its feature time to the lookup; NaN for a miss)."""

    values: dict[str, np.ndarray]
    hit: np.ndarray
    age_s: np.ndarray


def key_kind(field_type: pa.DataType, where: str) -> type:
    """int or str: the key types a request can send (JSON numbers are integers, text is text)."""
    if pa.types.is_integer(field_type):
        return int
    if pa.types.is_string(field_type) or pa.types.is_large_string(field_type):
        return str
    raise ConfigError(f"{where}: an entity key must be an integer or text column, not {field_type}")


class ViewReader(Protocol):
    """One view's online values, as a replica reads them."""

    version: int | None  # the version held (None: nothing materialized yet, or unreadable)
    key_types: tuple[type, ...]  # per key column, int or str
    last_error: str | None

    def refresh(self) -> bool:
        """Follow the store's current version; True when it moved. Errors keep the last version."""
        ...

    async def lookup(self, keys: Sequence[Key]) -> Found: ...

    def close(self) -> None: ...


class OnlineStore(Protocol):
    def write(self, view: FeatureViewConfig, latest: pa.Table, source_version: int, as_of: datetime) -> Materialized:
        """Replace the view's online values with `latest` (keys, FEATURE_TIME, the view's columns)."""
        ...

    def reader(self, view: FeatureViewConfig, numeric: set[str]) -> ViewReader: ...

    def describe(self, view: FeatureViewConfig) -> dict | None:
        """The view's current online version, its entities and when it was written (None: never)."""
        ...


def _empty(columns: Sequence[str], numeric: set[str], n: int) -> dict[str, np.ndarray]:
    return {c: np.full(n, np.nan) if c in numeric else np.full(n, None, object) for c in columns}


def nothing_found(columns: Sequence[str], numeric: set[str], n: int) -> Found:
    """n keys, none found."""
    return Found(_empty(columns, numeric, n), np.zeros(n, bool), np.full(n, np.nan))


def _as_value(value: object, numeric: bool) -> object:
    if value is None or value != value:  # None or NaN
        return np.nan if numeric else None
    return float(value) if numeric else value


def _micros_now() -> int:
    return time.time_ns() // 1000


# ---------------------------------------------------------------------------------------------- delta


@dataclass(frozen=True)
class _Snapshot:
    index: dict[Key, int]
    columns: dict[str, np.ndarray]
    feature_time_us: np.ndarray  # int64 microseconds since the epoch


class DeltaViewReader:
    def __init__(self, table: delta.Table, view: FeatureViewConfig, numeric: set[str]) -> None:
        self.table, self.view, self.numeric = table, view, numeric
        self.version: int | None = None
        self.key_types: tuple[type, ...] = ()
        self.last_error: str | None = None
        self._snapshot: _Snapshot | None = None

    def refresh(self) -> bool:
        try:
            version = self.table.version()
            if version < 0 or version == self.version:
                return False
            self._load(version)
        except Exception as exc:  # noqa: BLE001 - storage errors keep the version held serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.last_error = None
        return True

    def _load(self, version: int) -> None:
        data = delta.arrow_dataset(self.table.open(version)).to_table()
        missing = [c for c in (*self.view.keys, FEATURE_TIME, *self.view.columns) if c not in data.schema.names]
        if missing:
            raise OnlineStoreError(
                f"{self.table.uri} version {version} has no column {', '.join(missing)} "
                f"(view '{self.view.name}' changed: run `lakeloop features materialize`)"
            )
        types = tuple(key_kind(data.schema.field(k).type, f"{self.table.uri}: {k}") for k in self.view.keys)
        keys = zip(*(data.column(k).to_pylist() for k in self.view.keys), strict=True)
        columns = {}
        for name in self.view.columns:
            values = data.column(name).to_numpy(zero_copy_only=False)
            columns[name] = values.astype(float) if name in self.numeric else np.asarray(values, dtype=object)
        times = data.column(FEATURE_TIME).cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_numpy()
        snapshot = _Snapshot({key: i for i, key in enumerate(keys)}, columns, times)
        self._snapshot, self.key_types, self.version = snapshot, types, version  # swapped whole

    async def lookup(self, keys: Sequence[Key]) -> Found:
        return self.lookup_now(keys)

    def lookup_now(self, keys: Sequence[Key]) -> Found:
        snapshot, n = self._snapshot, len(keys)
        values, hit, ages = _empty(self.view.columns, self.numeric, n), np.zeros(n, bool), np.full(n, np.nan)
        if snapshot is None or not snapshot.index:
            return Found(values, hit, ages)
        rows = np.fromiter((snapshot.index.get(k, -1) for k in keys), np.int64, n)
        hit = rows >= 0
        found = rows[hit]
        for name, column in snapshot.columns.items():
            values[name][hit] = column[found]
        ages[hit] = (_micros_now() - snapshot.feature_time_us[found]) / 1e6
        return Found(values, hit, ages)

    def close(self) -> None:
        self._snapshot = None


class DeltaOnlineStore:
    def __init__(self, config: LakeloopConfig) -> None:
        self.tables, self.prefix = delta.tables(config), config.features.online.table_prefix

    def table(self, view: FeatureViewConfig) -> delta.Table:
        return self.tables.named(f"{self.prefix}{view.name}")

    def write(self, view: FeatureViewConfig, latest: pa.Table, source_version: int, as_of: datetime) -> Materialized:
        table = self.table(view)
        version = table.overwrite(latest)
        return Materialized(view.name, table.uri, version, latest.num_rows, source_version, as_of.isoformat())

    def reader(self, view: FeatureViewConfig, numeric: set[str]) -> DeltaViewReader:
        return DeltaViewReader(self.table(view), view, numeric)

    def describe(self, view: FeatureViewConfig) -> dict | None:
        table = self.table(view)
        if not table.exists():
            return None
        version = table.version()
        written = table.commit_time(version)
        return {
            "store": table.uri,
            "version": version,
            "entities": table.count(),
            "written_at": written.isoformat() if written else None,
        }


# ---------------------------------------------------------------------------------------------- redis


def _redis_key(key: Key) -> str:
    return json.dumps(list(key), separators=(",", ":"))


class RedisViewReader:
    def __init__(self, url: str, base: str, view: FeatureViewConfig, numeric: set[str]) -> None:
        import redis

        self.url, self.base, self.view, self.numeric = url, base, view, numeric
        self.version: int | None = None
        self.key_types: tuple[type, ...] = ()
        self.last_error: str | None = None
        self._sync = redis.Redis.from_url(url, socket_timeout=2)
        self._async = None  # made on the first lookup, on the event loop that uses it

    def refresh(self) -> bool:
        try:
            pointer = self._sync.get(self.base)
            if pointer is None:
                return False
            current = json.loads(pointer)
            if current["version"] == self.version:
                return False
            missing = [c for c in self.view.columns if c not in current["columns"]]
            if missing:
                raise OnlineStoreError(
                    f"redis {self.base} version {current['version']} has no column {', '.join(missing)} "
                    f"(view '{self.view.name}' changed: run `lakeloop features materialize`)"
                )
            types = tuple({"int": int, "str": str}[current["key_types"][k]] for k in self.view.keys)
            self._positions = [current["columns"].index(c) for c in self.view.columns]
            self.key_types, self.version = types, current["version"]
        except Exception as exc:  # noqa: BLE001 - Redis down: the version held stays
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        self.last_error = None
        return True

    async def lookup(self, keys: Sequence[Key]) -> Found:
        n, version = len(keys), self.version
        values = _empty(self.view.columns, self.numeric, n)
        hit, ages = np.zeros(n, bool), np.full(n, np.nan)
        if version is None or n == 0:
            return Found(values, hit, ages)
        if self._async is None:
            import redis.asyncio

            self._async = redis.asyncio.Redis.from_url(self.url, socket_timeout=2)
        stored = await self._async.mget([f"{self.base}:{version}:{_redis_key(k)}" for k in keys])
        now = _micros_now()
        for i, entry in enumerate(stored):
            if entry is None:
                continue
            row = json.loads(entry)
            hit[i], ages[i] = True, (now - row[0]) / 1e6
            for name, position in zip(self.view.columns, self._positions, strict=True):
                values[name][i] = _as_value(row[1 + position], name in self.numeric)
        return Found(values, hit, ages)

    def close(self) -> None:
        self._sync.close()


class RedisOnlineStore:
    def __init__(self, config: LakeloopConfig) -> None:
        import redis

        self.url = config.features.online.redis_url
        self.namespace = f"lakeloop:{config.mlflow.registered_model}:online"
        self.client = redis.Redis.from_url(self.url, socket_timeout=10)

    def base(self, view: FeatureViewConfig) -> str:
        return f"{self.namespace}:{view.name}"

    def write(self, view: FeatureViewConfig, latest: pa.Table, source_version: int, as_of: datetime) -> Materialized:
        import redis

        base = self.base(view)
        try:
            return self._write(base, view, latest, source_version, as_of)
        except redis.RedisError as exc:
            raise OnlineStoreError(f"redis {self.url}: cannot write view '{view.name}': {exc}") from None

    def _write(
        self, base: str, view: FeatureViewConfig, latest: pa.Table, source_version: int, as_of: datetime
    ) -> Materialized:
        key_types = {k: key_kind(latest.schema.field(k).type, f"view '{view.name}': {k}").__name__ for k in view.keys}
        previous = self.client.get(base)
        version = int(self.client.incr(f"{base}:versions"))
        times = latest.column(FEATURE_TIME).cast(pa.timestamp("us", "UTC")).cast(pa.int64()).to_pylist()
        keys = list(zip(*(latest.column(k).to_pylist() for k in view.keys), strict=True))
        columns = [latest.column(c).to_pylist() for c in view.columns]
        for start in range(0, len(keys), WRITE_CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for i in range(start, min(start + WRITE_CHUNK, len(keys))):
                row = [times[i], *(column[i] for column in columns)]
                pipe.set(f"{base}:{version}:{_redis_key(keys[i])}", json.dumps(row, separators=(",", ":")))
            pipe.execute()
        pointer = {
            "version": version,
            "columns": list(view.columns),
            "key_types": key_types,
            "entities": len(keys),
            "source_version": source_version,
            "as_of": as_of.isoformat(),
        }
        self.client.set(base, json.dumps(pointer))  # the switch: replicas follow it on their next refresh
        if previous is not None:
            self._expire(f"{base}:{json.loads(previous)['version']}:")
        return Materialized(view.name, base, version, len(keys), source_version, as_of.isoformat())

    def _expire(self, prefix: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key in self.client.scan_iter(match=f"{prefix}*", count=WRITE_CHUNK):
            pipe.expire(key, OLD_VERSION_GRACE_S)
        pipe.execute()

    def reader(self, view: FeatureViewConfig, numeric: set[str]) -> RedisViewReader:
        return RedisViewReader(self.url, self.base(view), view, numeric)

    def describe(self, view: FeatureViewConfig) -> dict | None:
        pointer = self.client.get(self.base(view))
        if pointer is None:
            return None
        current = json.loads(pointer)
        return {
            "store": f"{self.url} {self.base(view)}",
            "version": current["version"],
            "entities": current["entities"],
            "written_at": current["as_of"],
        }


def open_store(config: LakeloopConfig) -> OnlineStore:
    if config.features.online.store == "redis":
        return RedisOnlineStore(config)
    return DeltaOnlineStore(config)


def describe_views(config: LakeloopConfig) -> dict[str, dict | None]:
    """Each view's online version (None: never materialized), or an error line per view."""
    store = open_store(config)
    return {view.name: store.describe(view) for view in config.features.views}
