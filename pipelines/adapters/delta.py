"""Delta Lake access, the one place every table read and write goes through (so the configured
storage options always apply): open, pin a version, check the protocol, read, append, overwrite."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError, TableNotFoundError

from pipelines.core.errors import TableError

# Reader features the Ray Data parquet reader does not apply; reading such a table would silently
# return deleted rows or wrong column names.
_UNSUPPORTED_READER_FEATURES = {
    "deletionVectors": "deletion vectors",
    "columnMapping": "column mapping",
}


def open_table(uri: str, storage_options: Mapping[str, str] | None = None, version: int | None = None) -> DeltaTable:
    try:
        return DeltaTable(uri, version=version, storage_options=dict(storage_options or {}))
    except TableNotFoundError:
        raise TableError(f"{uri}: no Delta table here") from None
    except DeltaError as exc:
        if version is not None and "version" in str(exc).lower():
            raise TableError(f"{uri}: version {version} does not exist ({exc})") from None
        raise TableError(f"{uri}: cannot open Delta table: {exc}") from None


def table_exists(uri: str, storage_options: Mapping[str, str] | None = None) -> bool:
    return DeltaTable.is_deltatable(uri, storage_options=dict(storage_options or {}))


def unsupported_features(table: DeltaTable) -> list[str]:
    """Names of table features that lakeloop's readers cannot honour."""
    found: list[str] = []
    reader_features = table.protocol().reader_features or []
    for feature, label in _UNSUPPORTED_READER_FEATURES.items():
        if feature in reader_features:
            found.append(label)
    mode = table.metadata().configuration.get("delta.columnMapping.mode", "none")
    if mode != "none" and "column mapping" not in found:
        found.append("column mapping")
    return found


def require_readable(table: DeltaTable, uri: str) -> None:
    found = unsupported_features(table)
    if found:
        raise TableError(
            f"{uri}: table uses {', '.join(found)}, which lakeloop cannot read yet; "
            "rewrite it without them (e.g. REORG/PURGE, or copy into a new table)"
        )


def arrow_dataset(table: DeltaTable) -> pads.Dataset:
    return table.to_pyarrow_dataset()


class SchemaConflict(TableError):
    """Rows whose columns the table cannot take even with schema evolution (a column changed type)."""


CDF = {"delta.enableChangeDataFeed": "true"}  # lets readers ask which rows each commit added


class CommitConflict(TableError):
    """The table moved past the version a compare-and-set append expected."""


NO_TABLE = -1  # append(expected_version=NO_TABLE): only if this append creates the table
BLIND_APPEND_ATTEMPTS = 8  # each conflict means another writer committed; more than any race here


def version(uri: str, storage_options: Mapping[str, str] | None = None) -> int:
    """The table's latest version, or NO_TABLE."""
    return open_table(uri, storage_options).version() if table_exists(uri, storage_options) else NO_TABLE


def append(
    uri: str,
    data: pa.Table,
    storage_options: Mapping[str, str] | None = None,
    merge_schema: bool = False,
    transaction: tuple[str, int] | None = None,
    cdf: bool = False,
    expected_version: int | None = None,
) -> int:
    """Append rows as one commit and return the new table version. `merge_schema`: columns the
    table lacks are added (older rows read them as null). `transaction` (app id, number): a Delta
    app transaction recorded with the commit, so a writer can tell whether it already committed it
    (`transaction_version`). `cdf`: a table created by this append records its changes (change data
    feed). `expected_version`: compare-and-set, the commit lands only as the next version after this
    one (NO_TABLE: only if it creates the table), else CommitConflict; without it, a blind append
    that conflicts (nothing committed) is tried again, up to BLIND_APPEND_ATTEMPTS. (A recorded app transaction
    alone does not stop two concurrent writers: delta-rs rebases a blind append onto the other's
    commit, and two monitors started together both committed the same pass.)"""
    creating = not table_exists(uri, storage_options)  # read once: it decides CDF
    if expected_version is not None:
        return _append(uri, data, storage_options, merge_schema, transaction, cdf and creating, expected_version)
    for _ in range(BLIND_APPEND_ATTEMPTS - 1):
        try:
            return _append(uri, data, storage_options, merge_schema, transaction, cdf and creating, None)
        except CommitConflict:
            # Writers creating a table at once: delta-rs fails all but one create ("protocol
            # changed"), and rebases some of them into later versions that carry their own metadata;
            # any append that read the table before such a version then fails ("metadata changed";
            # 4 writers, 1 run in 300 here). Nothing was committed and another writer progressed,
            # so the next try meets fewer pending creates.
            creating = False
    return _append(uri, data, storage_options, merge_schema, transaction, False, None)


def _append(
    uri: str,
    data: pa.Table,
    storage_options: Mapping[str, str] | None,
    merge_schema: bool,
    transaction: tuple[str, int] | None,
    cdf: bool,  # this append creates the table with the change data feed on
    expected_version: int | None,
) -> int:
    target: str | DeltaTable = uri
    retries, mode = None, "append"
    if expected_version == NO_TABLE:
        mode = "error"  # checked again at commit: an append would land on a table created meanwhile
    if expected_version is not None:
        retries = 0  # never rebase onto a newer version
        if expected_version != version(uri, storage_options):
            raise CommitConflict(f"{uri}: the table is past version {expected_version}")
        if expected_version != NO_TABLE:
            target = open_table(uri, storage_options, expected_version)
    try:
        write_deltalake(
            target,
            data,
            mode=mode,
            storage_options=dict(storage_options or {}),
            schema_mode="merge" if merge_schema else None,
            configuration=CDF if cdf else None,
            commit_properties=CommitProperties(
                max_commit_retries=retries, app_transactions=[Transaction(*transaction)] if transaction else None
            ),
        )
    except CommitFailedError as exc:
        if expected_version is not None:
            raise CommitConflict(f"{uri}: another writer committed after version {expected_version}") from None
        raise CommitConflict(f"{uri}: append failed: {exc}") from None
    except SchemaMismatchError as exc:
        raise SchemaConflict(f"{uri}: the rows do not fit the table's schema: {exc}") from None
    except DeltaError as exc:
        if expected_version is not None and table_exists(uri, storage_options):
            raise CommitConflict(f"{uri}: another writer created the table") from None
        raise TableError(f"{uri}: append failed: {exc}") from None
    except Exception as exc:
        if "Cast error" in str(exc):
            raise SchemaConflict(f"{uri}: the rows do not fit the table's schema: {exc}") from None
        raise
    return open_table(uri, storage_options).version()


COMMIT_VERSION, COMMIT_TIME = "_commit_version", "_commit_timestamp"


def changes(
    uri: str, storage_options: Mapping[str, str] | None, after: int | None, columns: list[str]
) -> tuple[pa.Table, int] | None:
    """Rows inserted by the commits after version `after` (every commit, with None), each with its
    commit version and time (`_commit_version`, `_commit_timestamp`), and the table's current version;
    None when there is no table. Compaction commits add no rows here (they change no data). Versions
    written before the table had a change data feed are read from the files they added."""
    if not table_exists(uri, storage_options):
        return None
    table = open_table(uri, storage_options)
    current, start = table.version(), 0 if after is None else after + 1
    wanted = [*columns, COMMIT_VERSION, COMMIT_TIME]
    if start > current:
        return _empty(table, columns).append_column(COMMIT_VERSION, pa.array([], pa.int64())).append_column(
            COMMIT_TIME, pa.array([], pa.timestamp("ms"))
        ), current
    try:
        reader = table.load_cdf(
            starting_version=start,
            ending_version=current,
            columns=[*columns, "_change_type", COMMIT_VERSION, COMMIT_TIME],
        )
        data = _plain_types(pa.table(reader.read_all()))
        data = data.filter(pc.equal(data.column("_change_type"), "insert"))
    except DeltaError as exc:
        if "change data" not in str(exc):
            raise TableError(f"{uri}: cannot read its changes after version {after}: {exc}") from None
        data = _added_since(uri, storage_options, table, start, columns)
        data = data.set_column(
            data.schema.get_field_index(COMMIT_TIME),
            COMMIT_TIME,
            pc.fill_null(
                data.column(COMMIT_TIME), pa.scalar(datetime.now(UTC).replace(tzinfo=None), pa.timestamp("ms"))
            ),
        )
        with contextlib.suppress(DeltaError):  # from now on, commits carry a change feed
            enable_change_feed(uri, storage_options)
    data = data.select(wanted)
    return data.set_column(
        data.schema.get_field_index(COMMIT_VERSION), COMMIT_VERSION, pc.cast(data.column(COMMIT_VERSION), pa.int64())
    ), current


def _plain_types(data: pa.Table) -> pa.Table:
    """The change feed comes in arrow-rs's view types (string_view); pyarrow's kernels want plain ones."""
    plain = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    schema = pa.schema([f.with_type(plain.get(f.type, f.type)) for f in data.schema])
    return data if schema == data.schema else data.cast(schema)


def _empty(table: DeltaTable, columns: list[str]) -> pa.Table:
    return arrow_dataset(table).schema.empty_table().select(columns)


def _added_since(
    uri: str, storage_options: Mapping[str, str] | None, table: DeltaTable, start: int, columns: list[str]
) -> pa.Table:
    """For commits written without a change feed: the rows of the files each commit added (lakeloop's
    log tables are append-only; a compaction among these commits would count its rows again)."""
    dataset = arrow_dataset(table)
    fragments = {fragment.path: fragment for fragment in dataset.get_fragments()}
    root = uri.rstrip("/")
    known = (
        {_relative(u, root) for u in open_table(uri, storage_options, start - 1).file_uris()} if start > 0 else set()
    )
    parts = []
    for version in range(start, table.version() + 1):
        files = {_relative(u, root) for u in open_table(uri, storage_options, version).file_uris()}
        added = [fragments[p] for p in sorted(files - known) if p in fragments]
        known = files
        if added:
            rows = pads.FileSystemDataset(added, dataset.schema, dataset.format, dataset.filesystem).to_table(
                columns=columns
            )
            parts.append(
                rows.append_column(COMMIT_VERSION, pa.array([version] * rows.num_rows, pa.int64())).append_column(
                    COMMIT_TIME, pa.array([None] * rows.num_rows, pa.timestamp("ms"))
                )
            )
    empty = (
        _empty(table, columns)
        .append_column(COMMIT_VERSION, pa.array([], pa.int64()))
        .append_column(COMMIT_TIME, pa.array([], pa.timestamp("ms")))
    )
    return pa.concat_tables([empty, *parts])


def _relative(file_uri: str, root: str) -> str:
    """A data file's path relative to the table root (how the table's dataset fragments name it)."""
    return file_uri.removeprefix("file://").removeprefix(root.removeprefix("file://")).lstrip("/")


def maintain(
    uri: str,
    storage_options: Mapping[str, str] | None,
    retention_hours: int,
    keep_versions: list[int] | None = None,
    keep_since: datetime | None = None,
) -> dict:
    """Table upkeep: compact the small files appends leave into large ones (a commit that changes no
    data: readers of the change feed see no new rows), write a checkpoint of the log, then vacuum the
    files removed more than `retention_hours` ago, except those of `keep_versions` (versions that
    must stay readable) and those removed after `keep_since` (a reader's oldest unread commit: the
    change feed of a commit reads the files it added)."""
    table = open_table(uri, storage_options)
    before = {"version": table.version(), "files": len(table.file_uris())}
    try:
        compacted = table.optimize.compact()
        table.create_checkpoint()
        if keep_since is not None:
            waited = (datetime.now(UTC) - keep_since).total_seconds() / 3600
            retention_hours = max(retention_hours, int(waited) + 1)
        removed = table.vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            enforce_retention_duration=False,
            keep_versions=sorted(keep_versions) if keep_versions else None,
        )
    except DeltaError as exc:
        raise TableError(f"{uri}: upkeep failed: {exc}") from None
    table = open_table(uri, storage_options)
    return {
        "table": uri,
        "version_before": before["version"],
        "version_after": table.version(),
        "files_before": before["files"],
        "files_after": len(table.file_uris()),
        "files_compacted": int(compacted.get("numFilesRemoved", 0)),
        "files_vacuumed": len(removed),
        "retention_hours": retention_hours,
        "kept_versions": sorted(keep_versions or []),
    }


def commit_time(uri: str, storage_options: Mapping[str, str] | None, version: int) -> datetime | None:
    """When a version was committed (None if the log no longer has it)."""
    table = open_table(uri, storage_options)
    for entry in table.history(limit=max(table.version() - version + 1, 1)):
        if entry.get("version") == version and entry.get("timestamp") is not None:
            return datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)
    return None


def enable_change_feed(uri: str, storage_options: Mapping[str, str] | None = None) -> None:
    """Record each commit's changes from now on (tables lakeloop creates have it from the start)."""
    if table_exists(uri, storage_options):
        table = open_table(uri, storage_options)
        if table.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
            table.alter.set_table_properties(CDF)


def transaction_version(uri: str, app_id: str, storage_options: Mapping[str, str] | None = None) -> int | None:
    """The newest number committed under this app id, or None."""
    if not table_exists(uri, storage_options):
        return None
    return open_table(uri, storage_options).transaction_version(app_id)


def table_key(uri: str) -> str:
    """A file-name-safe key for a table URI (for per-table local directories)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", uri.strip("/"))[-150:]


def read(
    uri: str,
    storage_options: Mapping[str, str] | None = None,
    columns: list[str] | None = None,
    filter: pads.Expression | None = None,
) -> pa.Table | None:
    """The table's current rows (only `columns` that exist, and rows matching `filter`), or None when
    there is no table yet."""
    if not table_exists(uri, storage_options):
        return None
    data = arrow_dataset(open_table(uri, storage_options))
    present = None if columns is None else [c for c in columns if c in data.schema.names]
    return data.to_table(columns=present, filter=filter)


def schema(uri: str, storage_options: Mapping[str, str] | None = None) -> pa.Schema | None:
    """The current schema, or None when there is no table yet."""
    if not table_exists(uri, storage_options):
        return None
    return arrow_dataset(open_table(uri, storage_options)).schema


def overwrite(uri: str, data: pa.Table, storage_options: Mapping[str, str] | None = None) -> int:
    """Replace the table's rows and schema as one new version (older versions stay readable); returns it."""
    try:
        write_deltalake(
            uri, data, mode="overwrite", schema_mode="overwrite", storage_options=dict(storage_options or {})
        )
    except DeltaError as exc:
        raise TableError(f"{uri}: overwrite failed: {exc}") from None
    return open_table(uri, storage_options).version()


def count(uri: str, storage_options: Mapping[str, str] | None = None) -> int:
    """Rows in the table (0 when there is none), from the log's file statistics where it has them."""
    if not table_exists(uri, storage_options):
        return 0
    return open_table(uri, storage_options).count()


# Left to itself, Ray Data reads into at least 200 blocks (DataContext.read_op_min_num_blocks), splitting
# files to get them, and every later map then runs one task per block (15-20 ms each on 2 cores): reading
# and tagging 10M rows took 3.8-4.3 s in 200 blocks, 1.2-1.6 s in 10 (benchmarks/preprocessing.py).
ROWS_PER_READ_BLOCK = 1_000_000


def read_blocks(rows: int, cpus: int) -> int:
    """Blocks to read `rows` rows into: at least one per CPU, else about ROWS_PER_READ_BLOCK rows each."""
    return max(cpus, 1, math.ceil(rows / ROWS_PER_READ_BLOCK))


def ray_read(
    uri: str,
    storage_options: Mapping[str, str] | None = None,
    version: int | None = None,
    columns: list[str] | None = None,
):
    """The table (at `version`) as a Ray Dataset, read in parallel by Ray Data's Delta source into
    `read_blocks` blocks (the row count comes from the log's file statistics)."""
    import ray
    import ray.data

    rows = open_table(uri, storage_options, version).count()
    cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
    return ray.data.read_delta(
        uri,
        version=version,
        columns=columns,
        storage_options=dict(storage_options or {}) or None,
        override_num_blocks=read_blocks(rows, cpus),
    )


def ray_append(dataset, uri: str, storage_options: Mapping[str, str] | None = None) -> None:
    """Append a Ray Dataset to the table, written in parallel and committed once by Ray Data's Delta sink."""
    dataset.write_delta(uri, storage_options=dict(storage_options or {}) or None)
