"""Point-in-time joins: each label event gets the feature values as they were known at its time.

For every event row and its entity key, the feature row taken is the latest one whose event time is
at or before the event's time, whose created time (when the value was written, if the view has one)
is at or before it too (a late correction is invisible before it was written), and whose age is
within the view's time-to-live. Among rows with the same event time the one created last wins.
With no such row the event's feature values are missing (imputed downstream like any missing value).

This is the per-bucket step of a distributed join: callers split both sides by a hash of the entity
key, so that every entity's rows meet in one bucket, and join each bucket here. Within a bucket the
join pairs each event with every feature row of its entity and keeps one, so its memory grows with
events times feature rows per entity; a missing value comes back as NaN (integers as floats).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pandas as pd

_ROW = "__lakeloop_event_row"
_SEEN_AT = "__lakeloop_feature_time"
_CREATED = "__lakeloop_created_time"


@dataclass(frozen=True)
class ViewJoin:
    """What the join needs of a feature view."""

    keys: tuple[str, ...]
    event_time: str  # in the feature table
    columns: tuple[str, ...]
    created_time: str | None = None
    ttl: timedelta | None = None


def as_of_join(events: pd.DataFrame, features: pd.DataFrame, event_time: str, view: ViewJoin) -> pd.DataFrame:
    """`events` with the view's columns added, in the events' order. The key columns must be present
    on both sides; the time columns must be timestamps of one time zone."""
    missing = [c for c in (*view.keys, event_time) if c not in events.columns]
    missing += [c for c in (*view.keys, view.event_time, *view.columns) if c not in features.columns]
    if view.created_time and view.created_time not in features.columns:
        missing.append(view.created_time)
    if missing:
        raise ValueError(f"point-in-time join: missing columns {', '.join(sorted(set(missing)))}")
    clash = [c for c in view.columns if c in events.columns]
    if clash:
        raise ValueError(f"point-in-time join: the events already have columns {', '.join(clash)}")
    side = features[[*view.keys, *view.columns]].copy()
    side[_SEEN_AT] = features[view.event_time]
    side[_CREATED] = features[view.created_time] if view.created_time else features[view.event_time]
    left = events[[*view.keys, event_time]].copy()
    left[_ROW] = range(len(events))
    pairs = left.merge(side, on=list(view.keys), how="inner")
    at = pairs[event_time]
    visible = (pairs[_SEEN_AT] <= at) & (pairs[_CREATED] <= at)
    if view.ttl is not None:
        visible &= at - pairs[_SEEN_AT] <= view.ttl
    latest = (
        pairs[visible]
        .sort_values([_ROW, _SEEN_AT, _CREATED], kind="stable")
        .drop_duplicates(_ROW, keep="last")
        .set_index(_ROW)
    )
    joined = events.reset_index(drop=True).copy()
    for column in view.columns:
        joined[column] = latest[column].reindex(range(len(events))).to_numpy()
    return joined
