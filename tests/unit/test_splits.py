from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from pipelines import splits, synthetic
from pipelines.config import SplitConfig


def test_time_split_puts_newest_rows_in_test() -> None:
    table = synthetic.generate(2000, 1)
    config = SplitConfig()
    cutoffs = splits.time_cutoffs(table.column("event_time"), config)
    labels = splits.by_time(table.column("event_time").to_pandas(), cutoffs)
    frame = table.to_pandas().assign(split=labels)
    assert (frame["split"].value_counts(normalize=True) - pd.Series({"train": 0.7, "validation": 0.15, "test": 0.15})).abs().max() < 0.01
    assert frame[frame.split == "train"].event_time.max() < frame[frame.split == "validation"].event_time.min()
    assert frame[frame.split == "validation"].event_time.max() < frame[frame.split == "test"].event_time.min()


def test_hash_split_is_stable_and_batch_independent() -> None:
    keys = pd.Series([f"user-{i}" for i in range(5000)])
    config = SplitConfig(strategy="hash", key="user")
    whole = splits.by_hash(keys, config)
    in_pieces = [*splits.by_hash(keys[:1234], config), *splits.by_hash(keys[1234:], config)]
    assert list(whole) == in_pieces
    shares = pd.Series(whole).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.03)
    assert shares["test"] == pytest.approx(0.15, abs=0.03)


def test_hash_unit_interval_is_in_range_and_known() -> None:
    values = splits.hash_unit_interval(pd.Series(["a", "b", "a"]))
    assert ((values >= 0) & (values < 1)).all()
    assert values[0] == values[2] != values[1]


def test_time_cutoffs_accept_dates() -> None:
    dates = pa.array(pd.date_range("2026-01-01", periods=100, freq="D").date)
    first, second = splits.time_cutoffs(dates, SplitConfig())
    assert first < second
