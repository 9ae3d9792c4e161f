"""The data side of training: read pinned Delta versions with Ray Data, split (by time or hash, over
everything or, after drift, per regime), fit the feature pipeline on the training split, transform."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import partial, reduce

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig, SplitConfig
from pipelines.core.errors import ValidationFailed
from pipelines.core.feature_transform import Statistics, statistics
from pipelines.core.splits import (
    SPLIT_COLUMN,
    SPLITS,
    TRAIN,
    WEIGHT_COLUMN,
    SplitPlan,
    assign,
    epoch_micros,
    plan_split,
)
from pipelines.feature_tables.build import sources_of
from pipelines.training.features import FeaturePipeline
from pipelines.training.validation import ValidationReport, validate_table


@dataclass(frozen=True)
class TableVersion:
    uri: str
    version: int
    schema_fingerprint: str


@dataclass(frozen=True)
class Lineage:
    tables: list[TableVersion]  # every table read, each pinned at the version read
    rows: dict[str, int]  # per split
    policy: dict = field(default_factory=dict)  # how rows were split and weighted (SplitPlan.describe)
    # a training set built by `lakeloop features build`: the label and feature tables it joined, at
    # the versions it read (URI -> version)
    feature_sources: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        return " + ".join(f"{t.uri} version {t.version}" for t in self.tables)


@dataclass
class PreparedData:
    splits: dict[str, ray.data.Dataset]  # transformed: features + target columns
    raw: dict[str, ray.data.Dataset]  # untransformed rows of each split
    pipeline: FeaturePipeline
    lineage: Lineage


# Tagging and filtering stay in Arrow: converting every block to pandas and back cost more than
# the work itself (benchmarks/preprocessing.py).
def _tag(batch: pa.Table, split: SplitConfig, event_time: str, plan: SplitPlan) -> pa.Table:
    keys = batch.column(split.key).to_pandas() if split.strategy == "hash" else None
    codes, weights = assign(epoch_micros(batch.column(event_time)), keys, split, plan)
    return batch.append_column(SPLIT_COLUMN, pa.array(codes, pa.int8())).append_column(
        WEIGHT_COLUMN, pa.array(weights, pa.float32())
    )


def _keep(batch: pa.Table, code: int) -> pa.Table:
    return batch.filter(pc.equal(batch.column(SPLIT_COLUMN), code)).drop_columns([SPLIT_COLUMN])


def _since(batch: pa.Table, event_time: str, start: int) -> pa.Table:
    return batch.filter(pc.greater_equal(pa.array(epoch_micros(batch.column(event_time))), start))


def current_regime(config: LakeloopConfig, prepared: PreparedData, split: str) -> ray.data.Dataset:
    """The raw rows of a split from the regime the run was trained for: all of them, or after drift
    only the rows since the drift began."""
    start = prepared.lineage.policy.get("regime_start")
    rows = prepared.raw[split]
    if start is None:
        return rows
    micros = int(pd.Timestamp(start).value // 1000)
    return rows.map_batches(partial(_since, event_time=config.dataset.event_time, start=micros), batch_format="pyarrow")


def _event_micros(config: LakeloopConfig, source: delta.Table, version: int) -> pa.ChunkedArray:
    table = source.open(version)
    return epoch_micros(delta.arrow_dataset(table).to_table(columns=[config.dataset.event_time]).column(0))


def split_plan(
    config: LakeloopConfig, tables: list[tuple[delta.Table, int]], regime_start: datetime | None
) -> SplitPlan:
    """Decided once from every event time of the pinned tables (one column, read in Arrow)."""
    dataset = config.dataset
    if dataset.split.strategy == "hash" and regime_start is None:
        return SplitPlan(None)
    micros = np.concatenate([_event_micros(config, table, v) for table, v in tables])
    return plan_split(micros, dataset.split, regime_start, config.train.regime)


def read_splits(
    config: LakeloopConfig, tables: list[tuple[delta.Table, int]], plan: SplitPlan
) -> tuple[dict[str, ray.data.Dataset], Statistics]:
    """The raw rows of each split (with their training weight), from the union of pinned
    (table, version) pairs read once, each split materialized; and the feature statistics of the
    training split, gathered in the same tasks that cut the splits."""
    dataset = config.dataset
    reads = [table.ray_read(v, dataset.required_columns) for table, v in tables]
    source = reads[0].union(*reads[1:]) if len(reads) > 1 else reads[0]
    # Read and tag once, then cut each tagged block three ways in one task: lazily, each split would
    # re-read the whole table, and three filtered Ray Data passes over the tagged rows took 5-6 s more
    # at 1M rows on 2 cores (benchmarks/preprocessing.py: 14.5 and 13.0 s against 8.5 and 7.7 s).
    tagged = source.map_batches(
        partial(_tag, split=dataset.split, event_time=dataset.event_time, plan=plan), batch_format="pyarrow"
    ).materialize()
    cut_task = ray.remote(num_returns=len(SPLITS) + 1)(_cut)
    cut = [cut_task.remote(block, dataset.numeric, dataset.categorical) for block in tagged.to_arrow_refs()]
    splits = {name: ray.data.from_arrow_refs([parts[i] for parts in cut]) for i, name in enumerate(SPLITS)}
    # A Ray Data pass of its own over the training split took 0.6 s at 10M rows (benchmarks/preprocessing.py).
    return splits, reduce(Statistics.merge, ray.get([parts[-1] for parts in cut]), Statistics())


def _cut(block: pa.Table, numeric: list[str], categorical: list[str]) -> tuple[pa.Table | Statistics, ...]:
    """One tagged block as one block per split, in SPLITS order, then the partial feature statistics
    of its training rows."""
    parts = tuple(_keep(block, code) for code in range(len(SPLITS)))
    train = parts[TRAIN]
    return (*parts, statistics({name: train.column(name) for name in numeric + categorical}, numeric, categorical))


def prepare(
    config: LakeloopConfig,
    table: str | None = None,
    version: int | None = None,
    reports: list[ValidationReport] | None = None,
    regime_start: datetime | None = None,
) -> PreparedData:
    """Validate (unless the caller already did), then read, split, fit on train only, and transform.
    `reports` names several validated tables to train on their union (train.source: both);
    `regime_start` (when drift began) splits the rows since then on their own (train.regime)."""
    reports = reports or [validate_table(config, table, version)]
    tables = [(delta.tables(config).named(r.table_uri), r.version) for r in reports]
    plan = split_plan(config, tables, regime_start)
    raw, train_statistics = read_splits(config, tables, plan)  # materialized: every split is in the object store
    rows = {name: ds.count() for name, ds in raw.items()}
    feature_sources = {uri: v for r in reports for uri, v in sources_of(config, r.table_uri, r.version).items()}
    lineage = Lineage(
        [TableVersion(r.table_uri, r.version, r.fingerprint) for r in reports], rows, plan.describe(), feature_sources
    )
    empty = [name for name, count in rows.items() if count == 0]
    if empty:
        raise ValidationFailed(
            [f"{lineage.describe()}: split '{name}' has no rows; add data or change dataset.split" for name in empty]
        )
    pipeline = FeaturePipeline(config.dataset).fit(train_statistics)
    splits = {name: pipeline.transform(ds) for name, ds in raw.items()}
    return PreparedData(splits=splits, raw=raw, pipeline=pipeline, lineage=lineage)


def to_frame(ds: ray.data.Dataset) -> pd.DataFrame:
    """Rows as a numpy-backed DataFrame (Ray's to_pandas keeps Arrow dtypes some consumers reject)."""
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_columns]
    if not tables:
        return pd.DataFrame()
    names = tables[0].column_names  # blocks may order their columns differently
    return pa.concat_tables([t.select(names) for t in tables], promote_options="permissive").to_pandas()
