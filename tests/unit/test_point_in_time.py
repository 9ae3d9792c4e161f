"""The point-in-time join against a row-by-row reference, and the cases feature stores exist for:
no future values, late corrections invisible before they were written, a time-to-live (pure)."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _pairwise(events: pd.DataFrame, features: pd.DataFrame, event_time: str, view: ViewJoin) -> pd.DataFrame:
    """The obvious join: every event paired with every row of its entity, the visible ones kept, the
    best of them taken (memory grows with events x versions: a reference, not the product)."""
    keys = list(view.keys)
    side = features[[*keys, view.event_time, *view.columns]].rename(columns={view.event_time: "_seen"})
    side["_created"] = features[view.created_time] if view.created_time else features[view.event_time]
    left = events[[*keys, event_time]].assign(_row=range(len(events))).dropna(subset=[*keys, event_time])
    pairs = left.merge(side.dropna(subset=[*keys, "_seen", "_created"]), on=keys)
    at = pairs[event_time]
    visible = (pairs["_seen"] <= at) & (pairs["_created"] <= at)
    if view.ttl is not None:
        visible &= at - pairs["_seen"] <= view.ttl
    best = pairs[visible].sort_values(["_row", "_seen", "_created"], kind="stable").drop_duplicates("_row", keep="last")
    joined = events.reset_index(drop=True).copy()
    for column in view.columns:
        joined[column] = best.set_index("_row")[column].reindex(range(len(events))).to_numpy()
    return joined


def _large(seed: int, events: int, entities: int, versions: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Feature rows with late corrections, ties on event time, null keys, times and values; events
    for entities with and without features, some with a null key or time."""
    rng = np.random.default_rng(seed)
    rows = entities * versions
    computed = rng.integers(0, 60, rows).astype("timedelta64[D]") + np.datetime64("2026-01-01")
    late = rng.choice(np.array([0, 0, 0, 0, 6, 30, 24 * 5], "timedelta64[h]"), rows)  # corrections
    features = pd.DataFrame(
        {
            "customer": rng.integers(0, entities, rows).astype(float),
            "computed_at": pd.to_datetime(computed, utc=True),
            "written_at": pd.to_datetime(computed + late, utc=True),
            "spend": rng.normal(100, 30, rows).round(1),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
        }
    )
    for column, share in (("customer", 0.01), ("computed_at", 0.01), ("written_at", 0.01), ("spend", 0.05)):
        features.loc[rng.random(rows) < share, column] = None
    at = pd.to_datetime(
        np.datetime64("2026-01-01") + rng.integers(0, 70 * 24, events).astype("timedelta64[h]"), utc=True
    )
    frame = pd.DataFrame({"customer": rng.integers(0, int(entities * 1.2), events).astype(float), "at": at})
    frame.loc[rng.random(events) < 0.01, "customer"] = None
    frame.loc[rng.random(events) < 0.01, "at"] = None
    return frame, features


@pytest.mark.parametrize("created", ["written_at", None])
@pytest.mark.parametrize("ttl", [None, timedelta(days=7)])
def test_a_100k_row_join_equals_the_pairwise_reference_exactly(ttl: timedelta | None, created: str | None) -> None:
    events, features = _large(3, 100_000, 20_000, 10)
    view = ViewJoin(("customer",), "computed_at", ("spend", "plan"), created, ttl)
    joined, expected = as_of_join(events, features, "at", view), _pairwise(events, features, "at", view)
    pd.testing.assert_frame_equal(joined, expected)
    found = joined["plan"].notna()
    assert 0.2 < found.mean() < 0.95  # entities without features, nulls and (with a TTL) expiry all occur


def test_an_integer_key_is_joined_as_it_is_and_equals_the_reference() -> None:
    events, features = _large(4, 20_000, 4_000, 5)
    events, features = events.dropna(subset=["customer"]), features.dropna(subset=["customer"])
    events["customer"], features["customer"] = events["customer"].astype("int64"), features["customer"].astype("int64")
    for created in ("written_at", None):
        view = ViewJoin(("customer",), "computed_at", ("spend",), created)
        pd.testing.assert_frame_equal(as_of_join(events, features, "at", view), _pairwise(events, features, "at", view))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), ttl_days=st.one_of(st.none(), st.integers(0, 20)))
def test_no_value_written_after_the_label_time_ever_reaches_a_training_row(seed: int, ttl_days: int | None) -> None:
    events, features = _large(seed, 400, 40, 6)
    features["row"] = np.arange(len(features))  # which feature row was taken
    ttl = None if ttl_days is None else timedelta(days=ttl_days)
    joined = as_of_join(events, features, "at", ViewJoin(("customer",), "computed_at", ("row",), "written_at", ttl))
    taken = joined.dropna(subset=["row"])
    source = features.iloc[taken["row"].astype(int).to_numpy()]
    assert (source["written_at"].to_numpy() <= taken["at"].to_numpy()).all()
    assert (source["computed_at"].to_numpy() <= taken["at"].to_numpy()).all()
    assert (source["customer"].to_numpy() == taken["customer"].to_numpy()).all()
    if ttl is not None:
        assert (taken["at"].to_numpy() - source["computed_at"].to_numpy() <= np.timedelta64(ttl)).all()


def test_a_key_of_another_type_is_refused_naming_the_key() -> None:
    events = pd.DataFrame({"customer": ["1"], "at": [_day(1)]})
    features = pd.DataFrame({"customer": [1], "computed_at": [_day(0)], "written_at": [_day(0)], "spend": [1.0]})
    with pytest.raises(ValueError, match="key 'customer' is object in the events but int64 in the feature view"):
        as_of_join(events, features, "at", VIEW)
