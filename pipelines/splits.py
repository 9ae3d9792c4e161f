"""Deterministic train/validation/test assignment: by event time or by a hash of a key column."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import SplitConfig

SPLITS = ("train", "validation", "test")
SPLIT_COLUMN = "__split"


def time_cutoffs(event_times: pa.ChunkedArray | pa.Array, split: SplitConfig) -> tuple[int, int]:
    """Event-time quantiles (as epoch microseconds) separating train | validation | test."""
    micros = pc.cast(pc.cast(event_times, pa.timestamp("us", tz="UTC")), pa.int64())
    q = [split.train_fraction, split.train_fraction + split.validation_fraction]
    first, second = pc.quantile(micros, q=q, interpolation="lower").to_pylist()
    return int(first), int(second)


def by_time(event_times: pa.ChunkedArray | pa.Array | pd.Series, cutoffs: tuple[int, int]) -> np.ndarray:
    if isinstance(event_times, pd.Series):
        event_times = pa.array(event_times)
    micros = pc.cast(pc.cast(event_times, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy()
    labels = np.full(len(micros), "train", dtype=object)
    labels[micros >= cutoffs[0]] = "validation"
    labels[micros >= cutoffs[1]] = "test"
    return labels


def hash_unit_interval(keys: pd.Series) -> np.ndarray:
    """Map keys to [0, 1) with a hash that is stable across processes and runs."""
    hashed = pd.util.hash_pandas_object(keys.astype(str), index=False, categorize=False).to_numpy(np.uint64)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def by_hash(keys: pd.Series, split: SplitConfig) -> np.ndarray:
    position = hash_unit_interval(keys)
    labels = np.full(len(position), "train", dtype=object)
    labels[position >= split.train_fraction] = "validation"
    labels[position >= split.train_fraction + split.validation_fraction] = "test"
    return labels
