"""Deterministic train/validation/test assignment: by event time or by a hash of a key column, over
all rows or, after drift, over the current regime alone (older rows then only train, weighted)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.config import RegimeConfig, SplitConfig

SPLITS = ("train", "validation", "test")  # a row's split code is its position here
TRAIN = SPLITS.index("train")
DROPPED = len(SPLITS)  # the code of older rows beyond regime.max_old_rows: in no split
SPLIT_COLUMN = "__split"  # int8 codes: labelling 10M rows with strings cost 1.5 s more (benchmarks/preprocessing.py)
WEIGHT_COLUMN = "__weight"


def epoch_micros(times: pa.ChunkedArray | pa.Array | pd.Series) -> np.ndarray:
    if isinstance(times, pd.Series):
        times = pa.array(times)
    return pc.cast(pc.cast(times, pa.timestamp("us", tz="UTC")), pa.int64()).to_numpy(zero_copy_only=False)


def time_cutoffs(event_times: pa.ChunkedArray | pa.Array | np.ndarray, split: SplitConfig) -> tuple[int, int]:
    """Event-time quantiles (as epoch microseconds) separating train | validation | test."""
    micros = event_times if isinstance(event_times, np.ndarray) else epoch_micros(event_times)
    q = [split.train_fraction, split.train_fraction + split.validation_fraction]
    first, second = np.quantile(micros, q, method="lower")
    return int(first), int(second)


def to_micros(moment: datetime) -> int:
    """Epoch microseconds of a moment; a naive datetime is taken as UTC."""
    stamp = pd.Timestamp(moment)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1000)


def _codes(past_train: np.ndarray, past_validation: np.ndarray) -> np.ndarray:
    return past_train.astype(np.int8) + past_validation.astype(np.int8)


def by_time(event_times: pa.ChunkedArray | pa.Array | pd.Series | np.ndarray, cutoffs: tuple[int, int]) -> np.ndarray:
    """Split codes: train before the first cut-off, test from the second."""
    micros = event_times if isinstance(event_times, np.ndarray) else epoch_micros(event_times)
    return _codes(micros >= cutoffs[0], micros >= cutoffs[1])


def hash_unit_interval(keys: pd.Series) -> np.ndarray:
    """Map keys to [0, 1) with a hash that is stable across processes and runs."""
    hashed = pd.util.hash_pandas_object(keys.astype(str), index=False, categorize=False).to_numpy(np.uint64)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def by_hash(keys: pd.Series, split: SplitConfig) -> np.ndarray:
    position = hash_unit_interval(keys)
    return _codes(position >= split.train_fraction, position >= split.train_fraction + split.validation_fraction)


@dataclass(frozen=True)
class SplitPlan:
    """How every row of a training read is assigned, decided once from all the event times."""

    cutoffs: tuple[int, int] | None  # time strategy: quantiles of the rows that split
    regime_start: int | None = None  # epoch us; rows from here split alone; None: one split over everything
    old_from: int | None = None  # epoch us of the oldest older row kept (regime only)
    old_weight: float = 1.0  # weight of each kept older row
    new_rows: int = 0
    old_rows: int = 0  # older rows kept for training
    dropped_rows: int = 0
    note: str = "one split over every row"

    def describe(self) -> dict:
        start = None if self.regime_start is None else pd.Timestamp(self.regime_start, unit="us", tz="UTC").isoformat()
        return {
            "policy": "regime" if self.regime_start is not None else "all",
            "regime_start": start,
            "regime_rows": self.new_rows,
            "older_rows": self.old_rows,
            "older_rows_dropped": self.dropped_rows,
            "older_row_weight": round(self.old_weight, 6),
            "note": self.note,
        }


def plan_split(
    micros: np.ndarray, split: SplitConfig, regime_start: datetime | None, regime: RegimeConfig
) -> SplitPlan:
    """The split of rows with these event times (epoch us). With a regime start, the rows since then
    split on their own and older rows only train, together weighing as much as regime.old_rows_worth new
    rows; with too few new rows, one split over everything, and the note says so."""
    time_based = split.strategy == "time"
    if regime_start is None:
        return SplitPlan(time_cutoffs(micros, split) if time_based else None)
    start = to_micros(regime_start)
    new = micros >= start
    new_rows = int(new.sum())
    if new_rows < regime.min_rows:
        note = (
            f"only {new_rows} rows since the drift began (fewer than train.regime.min_rows {regime.min_rows}): "
            "one split over every row"
        )
        return SplitPlan(time_cutoffs(micros, split) if time_based else None, note=note, new_rows=new_rows)
    older = np.sort(micros[~new])
    kept = older[max(0, len(older) - regime.max_old_rows) :] if regime.max_old_rows else older[:0]
    weight = min(1.0, regime.old_rows_worth / len(kept)) if len(kept) else 1.0
    return SplitPlan(
        cutoffs=time_cutoffs(micros[new], split) if time_based else None,
        regime_start=start,
        old_from=int(kept[0]) if len(kept) else None,
        old_weight=weight,
        new_rows=new_rows,
        old_rows=len(kept),
        dropped_rows=len(older) - len(kept),
        note=f"{new_rows} rows since the drift began split on their own; "
        f"{len(kept)} older rows train with weight {weight:.4f}",
    )


def assign(
    micros: np.ndarray, keys: pd.Series | None, split: SplitConfig, plan: SplitPlan
) -> tuple[np.ndarray, np.ndarray]:
    """Split codes (positions in SPLITS, or DROPPED) and training weights of a batch of rows under a plan."""
    if split.strategy == "hash":
        assert keys is not None
        codes = by_hash(keys, split)
    else:
        assert plan.cutoffs is not None
        codes = by_time(micros, plan.cutoffs)
    weights = np.ones(len(micros), dtype=np.float32)
    if plan.regime_start is not None:
        old = micros < plan.regime_start
        codes[old] = TRAIN
        weights[old] = plan.old_weight
        if plan.old_from is None:
            codes[old] = DROPPED
        else:
            codes[old & (micros < plan.old_from)] = DROPPED
    return codes, weights
