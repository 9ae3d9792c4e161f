from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.core import splits
from pipelines.core.config import RegimeConfig, SplitConfig
from pipelines.scenarios import synthetic


def names(codes: np.ndarray) -> np.ndarray:
    """Split codes as the names a reader checks: SPLITS, then "dropped"."""
    return np.asarray([*splits.SPLITS, "dropped"])[codes]


def test_time_split_puts_newest_rows_in_test() -> None:
    table = synthetic.generate(2000, 1)
    config = SplitConfig()
    cutoffs = splits.time_cutoffs(table.column("event_time"), config)
    labels = names(splits.by_time(table.column("event_time").to_pandas(), cutoffs))
    frame = table.to_pandas().assign(split=labels)
    assert (
        frame["split"].value_counts(normalize=True) - pd.Series({"train": 0.7, "validation": 0.15, "test": 0.15})
    ).abs().max() < 0.01
    assert frame[frame.split == "train"].event_time.max() < frame[frame.split == "validation"].event_time.min()
    assert frame[frame.split == "validation"].event_time.max() < frame[frame.split == "test"].event_time.min()


def test_hash_split_is_stable_and_batch_independent() -> None:
    keys = pd.Series([f"user-{i}" for i in range(5000)])
    config = SplitConfig(strategy="hash", key="user")
    whole = names(splits.by_hash(keys, config))
    in_pieces = [*names(splits.by_hash(keys[:1234], config)), *names(splits.by_hash(keys[1234:], config))]
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


def _micros(frame: pd.DataFrame) -> np.ndarray:
    return splits.epoch_micros(pa.array(frame["event_time"]))


def test_regime_split_puts_new_rows_in_every_split_and_weighs_old_ones() -> None:
    frame = synthetic.generate(3000, 1).to_pandas()
    start = frame["event_time"].iloc[2000]  # the newest 1,000 rows are the new regime
    micros = _micros(frame)
    plan = splits.plan_split(
        micros, SplitConfig(), start, RegimeConfig(min_rows=300, old_rows_worth=40, max_old_rows=1500)
    )
    codes, weights = splits.assign(micros, None, SplitConfig(), plan)
    labels = names(codes)
    new = frame["event_time"] >= start
    assert pd.Series(labels[new.to_numpy()]).value_counts().to_dict() == pytest.approx(
        {"train": 700, "validation": 150, "test": 150}, abs=2
    )
    old = ~new.to_numpy()
    assert set(labels[old]) == {"train", "dropped"}
    assert (labels[old] == "train").sum() == 1500  # only the newest older rows are kept
    assert labels[old][-1] == "train" and labels[old][0] == "dropped"
    assert weights[old & (labels == "train")].sum() == pytest.approx(40, rel=1e-4)  # worth 40 new rows
    assert (weights[new.to_numpy()] == 1).all()
    assert plan.describe()["policy"] == "regime" and plan.describe()["regime_rows"] == 1000


def test_older_rows_weigh_the_same_however_many_rows_the_regime_has() -> None:
    """A prior: what the older rows are worth is fixed, so their share fades as the regime grows."""
    frame = synthetic.generate(5000, 1).to_pandas()
    micros = _micros(frame)
    totals = {}
    for new_rows in (500, 2000):
        start = frame["event_time"].iloc[len(frame) - new_rows]
        plan = splits.plan_split(micros, SplitConfig(), start, RegimeConfig(old_rows_worth=30))
        codes, weights = splits.assign(micros, None, SplitConfig(), plan)
        older_training = (micros < splits.to_micros(start)) & (names(codes) == "train")
        totals[new_rows] = weights[older_training].sum()
    assert totals[500] == pytest.approx(30, rel=1e-4) and totals[2000] == pytest.approx(30, rel=1e-4)


def test_too_few_rows_since_the_drift_fall_back_to_one_split_and_say_so() -> None:
    frame = synthetic.generate(2000, 1).to_pandas()
    micros = _micros(frame)
    plan = splits.plan_split(micros, SplitConfig(), frame["event_time"].iloc[1900], RegimeConfig(min_rows=300))
    assert plan.regime_start is None and "only 100 rows since the drift began" in plan.note
    codes, weights = splits.assign(micros, None, SplitConfig(), plan)
    assert (names(codes)[-300:] == "test").all() and (weights == 1).all()


def test_regime_split_with_hash_strategy_keeps_old_rows_in_training() -> None:
    frame = synthetic.generate(2000, 2).to_pandas()
    micros = _micros(frame)
    split = SplitConfig(strategy="hash", key="customer_id")
    plan = splits.plan_split(micros, split, frame["event_time"].iloc[1000], RegimeConfig(min_rows=300))
    codes, _ = splits.assign(micros, frame["customer_id"], split, plan)
    labels = names(codes)
    assert set(labels[:1000]) == {"train"}
    assert {"train", "validation", "test"} == set(labels[1000:])
