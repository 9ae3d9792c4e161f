"""Checks of a table against the dataset config: pure rules over column statistics.

Statistics are gathered by streaming record batches, so a large table is never loaded whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from pipelines.core.config import DatasetConfig

DISTINCT_CAP = 1000


@dataclass
class ColumnStats:
    nulls: int = 0
    non_finite: int = 0
    minimum: object = None
    maximum: object = None
    distinct: set = field(default_factory=set)  # capped at DISTINCT_CAP

    def update(self, column: pa.ChunkedArray | pa.Array, track_distinct: bool) -> None:
        self.nulls += column.null_count
        valid = pc.drop_null(column)
        if len(valid) == 0:
            return
        if pa.types.is_floating(valid.type):
            finite = pc.is_finite(valid)
            self.non_finite += len(valid) - pc.sum(finite).as_py()
            valid = pc.filter(valid, finite)
            if len(valid) == 0:
                return
        if _orderable(valid.type):
            bounds = pc.min_max(valid)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
            self.minimum = low if self.minimum is None else min(self.minimum, low)
            self.maximum = high if self.maximum is None else max(self.maximum, high)
        if track_distinct and len(self.distinct) < DISTINCT_CAP:
            self.distinct.update(pc.unique(valid).to_pylist()[: DISTINCT_CAP - len(self.distinct)])


@dataclass
class TableStats:
    rows: int
    columns: dict[str, ColumnStats]


def _orderable(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_decimal(dtype)
        or (pa.types.is_timestamp(dtype) or pa.types.is_date(dtype))
    )


def _distinct_columns(dataset: DatasetConfig) -> set[str]:
    return {*dataset.categorical, dataset.label} if dataset.task == "classification" else set(dataset.categorical)


def collect_stats(data: pads.Dataset, dataset: DatasetConfig) -> TableStats:
    present = [c for c in dataset.required_columns if c in data.schema.names]
    distinct = _distinct_columns(dataset)
    stats = {c: ColumnStats() for c in present}
    rows = 0
    for batch in data.to_batches(columns=present, batch_size=256_000):
        rows += batch.num_rows
        for name in present:
            stats[name].update(batch.column(name), track_distinct=name in distinct)
    return TableStats(rows=rows, columns=stats)


def _is_numeric(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype)


def _is_categorical(dtype: pa.DataType) -> bool:
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_integer(dtype)
        or pa.types.is_boolean(dtype)
        or pa.types.is_dictionary(dtype)
    )


def _type_problem(name: str, dtype: pa.DataType, expected: str, ok: bool) -> list[str]:
    return [] if ok else [f"column '{name}': expected {expected}, found {dtype}"]


def _feature_problems(name: str, kind: str, dtype: pa.DataType, stats: ColumnStats, rows: int) -> list[str]:
    if kind == "numeric":
        problems = _type_problem(name, dtype, "a numeric type (int, float, decimal)", _is_numeric(dtype))
    else:
        problems = _type_problem(name, dtype, "a categorical type (string, int, bool)", _is_categorical(dtype))
    if problems:
        return problems
    if stats.nulls == rows:
        return [f"column '{name}': every value is null"]
    if stats.non_finite:
        problems.append(f"column '{name}': {stats.non_finite} NaN or infinite values")
    constant = stats.minimum == stats.maximum if kind == "numeric" else len(stats.distinct) == 1
    if constant:
        value = stats.minimum if kind == "numeric" else next(iter(stats.distinct))
        problems.append(f"column '{name}': constant (every non-null value is {value!r}), it carries no signal")
    return problems


def _label_problems(dataset: DatasetConfig, dtype: pa.DataType, stats: ColumnStats) -> list[str]:
    name = dataset.label
    problems: list[str] = []
    if dataset.task == "classification":
        problems += _type_problem(name, dtype, "a class label type (int, string, bool)", _is_categorical(dtype))
        if problems:
            return problems
        allowed = set(dataset.class_index)
        invalid = sorted(str(v) for v in stats.distinct if str(v) not in allowed)
        if invalid:
            shown = ", ".join(invalid[:5]) + (" ..." if len(invalid) > 5 else "")
            problems.append(f"column '{name}': label values not in classes {dataset.classes}: {shown}")
    else:
        problems += _type_problem(name, dtype, "a numeric type for regression", _is_numeric(dtype))
        if not problems and stats.non_finite:
            problems.append(f"column '{name}': {stats.non_finite} NaN or infinite labels")
    if stats.nulls:
        problems.append(f"column '{name}': {stats.nulls} rows have no label")
    return problems


def check_table(schema: pa.Schema, stats: TableStats, dataset: DatasetConfig) -> list[str]:
    """Every problem found, one line each, naming the column."""
    problems = [f"column '{c}': missing from the table" for c in dataset.required_columns if c not in schema.names]
    if stats.rows == 0:
        return [*problems, "table is empty: no rows to train on"]
    types = {f.name: f.type for f in schema}
    for feature in dataset.features:
        if feature.name in types:
            problems += _feature_problems(
                feature.name, feature.kind, types[feature.name], stats.columns[feature.name], stats.rows
            )
    if dataset.label in types:
        problems += _label_problems(dataset, types[dataset.label], stats.columns[dataset.label])
    if dataset.event_time in types:
        dtype = types[dataset.event_time]
        problems += _type_problem(
            dataset.event_time, dtype, "a timestamp or date", pa.types.is_timestamp(dtype) or pa.types.is_date(dtype)
        )
        if stats.columns[dataset.event_time].nulls:
            problems.append(
                f"column '{dataset.event_time}': {stats.columns[dataset.event_time].nulls} rows have no event time"
            )
    key = dataset.split.key
    if dataset.split.strategy == "hash" and key in types and stats.columns[key].nulls:
        problems.append(f"column '{key}': {stats.columns[key].nulls} rows have no split key")
    return problems


def schema_fingerprint(schema: pa.Schema, columns: Iterable[str]) -> str:
    """A stable digest of the configured columns' names and types, to spot schema changes."""
    wanted = set(columns)
    text = ";".join(f"{f.name}:{f.type}" for f in sorted(schema, key=lambda f: f.name) if f.name in wanted)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
