"""Delta Lake access: a `Table` is one Delta table bound to the configured storage options, and every
table read and write in lakeloop goes through one (`tables(config)` names the loop's tables), so the
options always apply: open, pin a version, check the protocol, read, append, overwrite, read the
change feed, upkeep, and Ray Data reads and writes."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, SchemaMismatchError, TableNotFoundError

from pipelines.core.config import LakeloopConfig, StorageConfig
from pipelines.core.errors import ConfigError, TableError

# Reader features the Ray Data parquet reader does not apply; reading such a table would silently
# return deleted rows or wrong column names.
_UNSUPPORTED_READER_FEATURES = {
    "deletionVectors": "deletion vectors",
    "columnMapping": "column mapping",
}


class SchemaConflict(TableError):
    """Rows whose columns the table cannot take even with schema evolution (a column changed type)."""


class CommitConflict(TableError):
    """The table moved past the version a compare-and-set append expected."""


CDF = {"delta.enableChangeDataFeed": "true"}  # lets readers ask which rows each commit added
NO_TABLE = -1  # Table.append(expected_version=NO_TABLE): only if this append creates the table
BLIND_APPEND_ATTEMPTS = 8  # each conflict means another writer committed; more than any race here
COMMIT_VERSION, COMMIT_TIME = "_commit_version", "_commit_timestamp"

# Left to itself, Ray Data reads into at least 200 blocks (DataContext.read_op_min_num_blocks), splitting
# files to get them, and every later map then runs one task per block (15-20 ms each on 2 cores): reading
# and tagging 10M rows took 3.8-4.3 s in 200 blocks, 1.2-1.6 s in 10 (benchmarks/preprocessing.py).
ROWS_PER_READ_BLOCK = 1_000_000


def read_blocks(rows: int, cpus: int) -> int:
    """Blocks to read `rows` rows into: at least one per CPU, else about ROWS_PER_READ_BLOCK rows each."""
    return max(cpus, 1, math.ceil(rows / ROWS_PER_READ_BLOCK))


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


def arrow_dataset(table: DeltaTable) -> pads.Dataset:
    return table.to_pyarrow_dataset()


def table_key(uri: str) -> str:
    """A file-name-safe key for a table URI (for per-table local directories)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", uri.strip("/"))[-150:]


@dataclass(frozen=True)
class Table:
    """One Delta table (a local path or an object-store URI) and the storage options every access to
    it uses."""

    uri: str
    storage_options: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def _options(self) -> dict[str, str]:
        return dict(self.storage_options)

    def open(self, version: int | None = None) -> DeltaTable:
        try:
            return DeltaTable(self.uri, version=version, storage_options=self._options)
        except TableNotFoundError:
            raise TableError(f"{self.uri}: no Delta table here") from None
        except DeltaError as exc:
            if version is not None and "version" in str(exc).lower():
                raise TableError(f"{self.uri}: version {version} does not exist ({exc})") from None
            raise TableError(f"{self.uri}: cannot open Delta table: {exc}") from None

    def exists(self) -> bool:
        return DeltaTable.is_deltatable(self.uri, storage_options=self._options)

    def require_readable(self, table: DeltaTable) -> None:
        """Refuse a table (opened from this one) whose features lakeloop's readers cannot honour."""
        found = unsupported_features(table)
        if found:
            raise TableError(
                f"{self.uri}: table uses {', '.join(found)}, which lakeloop cannot read yet; "
                "rewrite it without them (e.g. REORG/PURGE, or copy into a new table)"
            )

    def version(self) -> int:
        """The table's latest version, or NO_TABLE."""
        return self.open().version() if self.exists() else NO_TABLE

    def dead_letter(self) -> Table:
        """Where rows that can never be written to this table go, with the reason."""
        return Table(f"{self.uri.rstrip('/')}_dead_letter", self.storage_options)

    def append(
        self,
        data: pa.Table,
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
        that conflicts (nothing committed) is tried again, up to BLIND_APPEND_ATTEMPTS. (A recorded app
        transaction alone does not stop two concurrent writers: delta-rs rebases a blind append onto the
        other's commit, and two monitors started together both committed the same pass.)"""
        creating = not self.exists()  # read once: it decides CDF
        if expected_version is not None:
            return self._append(data, merge_schema, transaction, cdf and creating, expected_version)
        for _ in range(BLIND_APPEND_ATTEMPTS - 1):
            try:
                return self._append(data, merge_schema, transaction, cdf and creating, None)
            except CommitConflict:
                # Writers creating a table at once: delta-rs fails all but one create ("protocol
                # changed"), and rebases some of them into later versions that carry their own metadata;
                # any append that read the table before such a version then fails ("metadata changed";
                # 4 writers, 1 run in 300 here). Nothing was committed and another writer progressed,
                # so the next try meets fewer pending creates.
                creating = False
        return self._append(data, merge_schema, transaction, False, None)

    def _append(
        self,
        data: pa.Table,
        merge_schema: bool,
        transaction: tuple[str, int] | None,
        cdf: bool,  # this append creates the table with the change data feed on
        expected_version: int | None,
    ) -> int:
        target: str | DeltaTable = self.uri
        retries, mode = None, "append"
        if expected_version == NO_TABLE:
            mode = "error"  # checked again at commit: an append would land on a table created meanwhile
        if expected_version is not None:
            retries = 0  # never rebase onto a newer version
            if expected_version != self.version():
                raise CommitConflict(f"{self.uri}: the table is past version {expected_version}")
            if expected_version != NO_TABLE:
                target = self.open(expected_version)
        try:
            write_deltalake(
                target,
                data,
                mode=mode,
                storage_options=self._options,
                schema_mode="merge" if merge_schema else None,
                configuration=CDF if cdf else None,
                commit_properties=CommitProperties(
                    max_commit_retries=retries, app_transactions=[Transaction(*transaction)] if transaction else None
                ),
            )
        except CommitFailedError as exc:
            if expected_version is not None:
                raise CommitConflict(f"{self.uri}: another writer committed after version {expected_version}") from None
            raise CommitConflict(f"{self.uri}: append failed: {exc}") from None
        except SchemaMismatchError as exc:
            raise SchemaConflict(f"{self.uri}: the rows do not fit the table's schema: {exc}") from None
        except DeltaError as exc:
            if expected_version is not None and self.exists():
                raise CommitConflict(f"{self.uri}: another writer created the table") from None
            raise TableError(f"{self.uri}: append failed: {exc}") from None
        except Exception as exc:
            if "Cast error" in str(exc):
                raise SchemaConflict(f"{self.uri}: the rows do not fit the table's schema: {exc}") from None
            raise
        return self.open().version()

    def changes(self, after: int | None, columns: list[str]) -> tuple[pa.Table, int] | None:
        """Rows inserted by the commits after version `after` (every commit, with None), each with its
        commit version and time (`_commit_version`, `_commit_timestamp`), and the table's current
        version; None when there is no table. Compaction commits add no rows here (they change no
        data). Versions written before the table had a change data feed are read from the files they
        added."""
        if not self.exists():
            return None
        table = self.open()
        current, start = table.version(), 0 if after is None else after + 1
        wanted = [*columns, COMMIT_VERSION, COMMIT_TIME]
        if start > current:
            return _with_commit_columns(_empty(table, columns), []), current
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
                raise TableError(f"{self.uri}: cannot read its changes after version {after}: {exc}") from None
            data = self._added_since(table, start, columns)
            data = data.set_column(
                data.schema.get_field_index(COMMIT_TIME),
                COMMIT_TIME,
                pc.fill_null(
                    data.column(COMMIT_TIME), pa.scalar(datetime.now(UTC).replace(tzinfo=None), pa.timestamp("ms"))
                ),
            )
            with contextlib.suppress(DeltaError):  # from now on, commits carry a change feed
                self.enable_change_feed()
        data = data.select(wanted)
        return data.set_column(
            data.schema.get_field_index(COMMIT_VERSION),
            COMMIT_VERSION,
            pc.cast(data.column(COMMIT_VERSION), pa.int64()),
        ), current

    def _added_since(self, table: DeltaTable, start: int, columns: list[str]) -> pa.Table:
        """For commits written without a change feed: the rows of the files each commit added (lakeloop's
        log tables are append-only; a compaction among these commits would count its rows again)."""
        dataset = arrow_dataset(table)
        fragments = {fragment.path: fragment for fragment in dataset.get_fragments()}
        root = self.uri.rstrip("/")
        known = {_relative(u, root) for u in self.open(start - 1).file_uris()} if start > 0 else set()
        parts = []
        for version in range(start, table.version() + 1):
            files = {_relative(u, root) for u in self.open(version).file_uris()}
            added = [fragments[p] for p in sorted(files - known) if p in fragments]
            known = files
            if added:
                rows = pads.FileSystemDataset(added, dataset.schema, dataset.format, dataset.filesystem).to_table(
                    columns=columns
                )
                parts.append(_with_commit_columns(rows, [version] * rows.num_rows))
        return pa.concat_tables([_with_commit_columns(_empty(table, columns), []), *parts])

    def maintain(
        self, retention_hours: int, keep_versions: list[int] | None = None, keep_since: datetime | None = None
    ) -> dict:
        """Table upkeep: compact the small files appends leave into large ones (a commit that changes no
        data: readers of the change feed see no new rows), write a checkpoint of the log, then vacuum the
        files removed more than `retention_hours` ago, except those of `keep_versions` (versions that
        must stay readable) and those removed after `keep_since` (a reader's oldest unread commit: the
        change feed of a commit reads the files it added)."""
        table = self.open()
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
            raise TableError(f"{self.uri}: upkeep failed: {exc}") from None
        table = self.open()
        return {
            "table": self.uri,
            "version_before": before["version"],
            "version_after": table.version(),
            "files_before": before["files"],
            "files_after": len(table.file_uris()),
            "files_compacted": int(compacted.get("numFilesRemoved", 0)),
            "files_vacuumed": len(removed),
            "retention_hours": retention_hours,
            "kept_versions": sorted(keep_versions or []),
        }

    def commit_time(self, version: int) -> datetime | None:
        """When a version was committed (None if the log no longer has it)."""
        table = self.open()
        for entry in table.history(limit=max(table.version() - version + 1, 1)):
            if entry.get("version") == version and entry.get("timestamp") is not None:
                return datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)
        return None

    def enable_change_feed(self) -> None:
        """Record each commit's changes from now on (tables lakeloop creates have it from the start)."""
        if self.exists():
            table = self.open()
            if table.metadata().configuration.get("delta.enableChangeDataFeed") != "true":
                table.alter.set_table_properties(CDF)

    def transaction_version(self, app_id: str) -> int | None:
        """The newest number committed under this app id, or None."""
        if not self.exists():
            return None
        return self.open().transaction_version(app_id)

    def read(self, columns: list[str] | None = None, filter: pads.Expression | None = None) -> pa.Table | None:
        """The table's current rows (only `columns` that exist, and rows matching `filter`), or None when
        there is no table yet."""
        if not self.exists():
            return None
        data = arrow_dataset(self.open())
        present = None if columns is None else [c for c in columns if c in data.schema.names]
        return data.to_table(columns=present, filter=filter)

    def schema(self) -> pa.Schema | None:
        """The current schema, or None when there is no table yet."""
        if not self.exists():
            return None
        return arrow_dataset(self.open()).schema

    def overwrite(self, data: pa.Table) -> int:
        """Replace the table's rows and schema as one new version (older versions stay readable); returns it."""
        try:
            write_deltalake(self.uri, data, mode="overwrite", schema_mode="overwrite", storage_options=self._options)
        except DeltaError as exc:
            raise TableError(f"{self.uri}: overwrite failed: {exc}") from None
        return self.open().version()

    def count(self) -> int:
        """Rows in the table (0 when there is none), from the log's file statistics where it has them."""
        if not self.exists():
            return 0
        return self.open().count()

    def ray_read(self, version: int | None = None, columns: list[str] | None = None):
        """The table (at `version`) as a Ray Dataset, read in parallel by Ray Data's Delta source into
        `read_blocks` blocks (the row count comes from the log's file statistics)."""
        import ray
        import ray.data

        rows = self.open(version).count()
        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else os.cpu_count() or 1
        return ray.data.read_delta(
            self.uri,
            version=version,
            columns=columns,
            storage_options=self._options or None,
            override_num_blocks=read_blocks(rows, cpus),
        )

    def ray_overwrite(self, dataset) -> int:
        """Replace the table's rows and schema with a Ray Dataset, written in parallel and committed once
        as one new version (older versions stay readable); returns it."""
        from ray.data import SaveMode

        dataset.write_delta(self.uri, mode=SaveMode.OVERWRITE, storage_options=self._options or None)
        return self.open().version()

    def ray_append(self, dataset) -> None:
        """Append a Ray Dataset, written in parallel and committed once by Ray Data's Delta sink."""
        dataset.write_delta(self.uri, storage_options=self._options or None)


class Tables:
    """The tables of one configuration, each bound to its storage options."""

    def __init__(self, config: LakeloopConfig) -> None:
        self.config = config

    def named(self, name: str) -> Table:
        """A table name under storage.root, or a full path/URI (an --input or --table argument)."""
        storage = self.config.storage
        return Table(storage.resolve(name), storage.storage_options)

    def source(self, given: str | None) -> Table:
        """A --table argument, else the dataset table."""
        return self.named(given) if given else self.events

    @property
    def events(self) -> Table:
        return self.named(self.config.dataset.table)

    @property
    def predictions(self) -> Table:
        return self.named(self.config.serving.prediction_log.predictions_table)

    @property
    def feedback(self) -> Table:
        return self.named(self.config.serving.prediction_log.feedback_table)

    @property
    def shadow(self) -> Table:
        return self.named(self.config.serving.prediction_log.shadow_table)

    @property
    def labelled(self) -> Table:
        return self.named(self.config.serving.prediction_log.labelled_table)

    @property
    def drift_reports(self) -> Table:
        return self.named(self.config.monitor.drift_reports_table)

    @property
    def attempts(self) -> Table:
        return self.named(self.config.monitor.attempts_table)


def tables(config: LakeloopConfig) -> Tables:
    return Tables(config)


# delta-rs storage options (any case, with or without the AWS_ prefix) that Ray Train's pyarrow S3
# filesystem needs too; the others only concern Delta's commits (locking, conditional put) and are not
# needed to write checkpoints.
_ENDPOINT, _REGION, _HTTP = ("endpoint_url", "endpoint"), ("region",), ("allow_http",)
_COMMIT_ONLY = (
    "s3_locking_provider",
    "dynamodb_table_name",
    "conditional_put",
    "s3_allow_unsafe_rename",
    "allow_unsafe_rename",
    "copy_if_not_exists",
)


def train_filesystem(storage: StorageConfig, storage_path: str):
    """The pyarrow filesystem Ray Train should write checkpoints with, and the path on it: None and the
    URI as is where pyarrow's own resolution reaches the same place as Delta (a local path, or no
    storage options). Ray Train resolves an s3:// path with AWS's defaults and nothing of
    storage.storage_options: an endpoint given only there sent checkpoints to AWS itself."""
    parsed = urlparse(storage_path)
    options = {k.lower().removeprefix("aws_"): v for k, v in storage.storage_options.items()}
    if parsed.scheme not in ("s3", "s3a") or not options:
        if parsed.scheme and parsed.scheme != "file" and options:
            raise ConfigError(
                f"storage.storage_options: Ray Train writes checkpoints to {storage_path} with pyarrow, and "
                f"lakeloop passes options to it only for s3:// (set train.storage_path to an s3:// or local path)"
            )
        return None, storage_path
    from pyarrow import fs

    endpoint = next((options[k] for k in _ENDPOINT if k in options), None)
    unknown = sorted(k for k in options if k not in (*_ENDPOINT, *_REGION, *_HTTP, *_COMMIT_ONLY))
    if unknown:
        raise ConfigError(
            f"storage.storage_options: {', '.join(unknown)} cannot be passed to Ray Train's S3 filesystem; "
            "remove them or set train.storage_path to a local path"
        )
    kwargs: dict = {"region": options.get("region")} if options.get("region") else {}
    if endpoint:
        address = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = address.netloc
        kwargs["scheme"] = address.scheme
    if options.get("allow_http", "").lower() == "true" and "scheme" not in kwargs:
        kwargs["scheme"] = "http"
    return fs.S3FileSystem(**kwargs), f"{parsed.netloc}{parsed.path}"


def _with_commit_columns(rows: pa.Table, versions: list[int]) -> pa.Table:
    """Rows with a commit version each and an unknown (null) commit time."""
    return rows.append_column(COMMIT_VERSION, pa.array(versions, pa.int64())).append_column(
        COMMIT_TIME, pa.array([None] * len(versions), pa.timestamp("ms"))
    )


def _plain_types(data: pa.Table) -> pa.Table:
    """The change feed comes in arrow-rs's view types (string_view); pyarrow's kernels want plain ones."""
    plain = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    schema = pa.schema([f.with_type(plain.get(f.type, f.type)) for f in data.schema])
    return data if schema == data.schema else data.cast(schema)


def _empty(table: DeltaTable, columns: list[str]) -> pa.Table:
    return arrow_dataset(table).schema.empty_table().select(columns)


def _relative(file_uri: str, root: str) -> str:
    """A data file's path relative to the table root (how the table's dataset fragments name it)."""
    return file_uri.removeprefix("file://").removeprefix(root.removeprefix("file://")).lstrip("/")
