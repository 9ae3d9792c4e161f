"""Delta Lake access, the one place every table read and write goes through (so the configured
storage options always apply): open, pin a version, check the protocol, read, append, overwrite."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
import pyarrow.dataset as pads
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError, TableNotFoundError

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


def append(
    uri: str, data: pa.Table, storage_options: Mapping[str, str] | None = None, merge_schema: bool = False
) -> int:
    """Append rows as one commit and return the new table version. With `merge_schema`, columns the
    table lacks are added (older rows read them as null)."""
    try:
        write_deltalake(
            uri,
            data,
            mode="append",
            storage_options=dict(storage_options or {}),
            schema_mode="merge" if merge_schema else None,
        )
    except DeltaError as exc:
        raise TableError(f"{uri}: append failed: {exc}") from None
    return open_table(uri, storage_options).version()


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
