"""The point-in-time join against a row-by-row reference, and the cases feature stores exist for:
no future values, late corrections invisible before they were written, a time-to-live (pure)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from pipelines.core.point_in_time import ViewJoin, as_of_join

T0 = pd.Timestamp("2026-01-01", tz="UTC")
VIEW = ViewJoin(keys=("customer",), event_time="computed_at", columns=("spend",), created_time="written_at")


def _day(n: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=n)


def _reference(events: pd.DataFrame, features: pd.DataFrame, view: ViewJoin) -> list[float]:
    """Row by row: the visible feature rows of the event's entity, the latest (then last written)."""
    values = []
    for _, event in events.iterrows():
        best = None
        for _, row in features[features["customer"] == event["customer"]].iterrows():
            seen, written, at = row["computed_at"], row["written_at"], event["at"]
            if seen > at or written > at or (view.ttl is not None and at - seen > view.ttl):
                continue
            if best is None or (seen, written) >= (best["computed_at"], best["written_at"]):
                best = row
        values.append(np.nan if best is None else best["spend"])
    return values


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ttl", [None, timedelta(days=3)])
def test_the_join_matches_a_row_by_row_reference(seed: int, ttl: timedelta | None) -> None:
    rng = np.random.default_rng(seed)
    rows = 120
    computed = rng.integers(0, 20, rows).astype(float)
    features = pd.DataFrame(
        {
            "customer": rng.integers(0, 6, rows),
            "computed_at": [_day(d) for d in computed],
            # most values are written at once; some hours or days late (corrections)
            "written_at": [_day(d + w) for d, w in zip(computed, rng.choice([0, 0, 0, 0.5, 4], rows), strict=True)],
            "spend": rng.normal(100, 30, rows).round(2),
        }
    )
    events = pd.DataFrame(
        {"customer": rng.integers(0, 7, 80), "at": [_day(d) for d in rng.uniform(0, 25, 80)], "label": 1}
    )
    view = ViewJoin(VIEW.keys, VIEW.event_time, VIEW.columns, VIEW.created_time, ttl)
    joined = as_of_join(events, features, "at", view)
    assert list(joined.columns) == ["customer", "at", "label", "spend"]
    np.testing.assert_array_equal(joined["spend"].to_numpy(), np.array(_reference(events, features, view)))
    assert joined["spend"].isna().any() and joined["spend"].notna().any()  # both cases occur


def test_no_future_value_and_a_late_correction_only_once_written() -> None:
    features = pd.DataFrame(
        {
            "customer": [1, 1, 1],
            "computed_at": [_day(1), _day(1), _day(5)],
            "written_at": [_day(1), _day(3), _day(5)],  # day 1's value corrected on day 3
            "spend": [10.0, 11.0, 50.0],
        }
    )
    events = pd.DataFrame({"customer": [1, 1, 1, 1, 2], "at": [_day(0.5), _day(2), _day(3), _day(6), _day(6)]})
    joined = as_of_join(events, features, "at", VIEW)
    # before any value; the original; the correction once written; the newer value; an unknown customer
    np.testing.assert_array_equal(joined["spend"].to_numpy(), [np.nan, 10.0, 11.0, 50.0, np.nan])
    aged = ViewJoin(VIEW.keys, VIEW.event_time, VIEW.columns, VIEW.created_time, timedelta(days=1))
    assert as_of_join(events, features, "at", aged)["spend"].isna().tolist() == [True, False, True, False, True]


def test_without_a_created_time_the_event_time_decides_and_keys_may_be_composite() -> None:
    features = pd.DataFrame(
        {"shop": ["a", "a", "b"], "till": [1, 2, 1], "updated": [_day(1), _day(1), _day(1)], "load": [1.0, 2.0, 3.0]}
    )
    events = pd.DataFrame({"shop": ["a", "b", "b"], "till": [2, 1, 2], "at": [_day(2)] * 3})
    view = ViewJoin(("shop", "till"), "updated", ("load",))
    np.testing.assert_array_equal(as_of_join(events, features, "at", view)["load"], [2.0, 3.0, np.nan])


def test_missing_and_clashing_columns_are_named() -> None:
    events = pd.DataFrame({"customer": [1], "at": [_day(1)]})
    with pytest.raises(ValueError, match="written_at"):
        as_of_join(events, pd.DataFrame({"customer": [1], "computed_at": [_day(0)], "spend": [1.0]}), "at", VIEW)
    with pytest.raises(ValueError, match="already have columns spend"):
        as_of_join(
            events.assign(spend=1.0),
            pd.DataFrame(columns=["customer", "computed_at", "written_at", "spend"]),
            "at",
            VIEW,
        )
