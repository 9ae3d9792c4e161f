"""Point-in-time joins: each label event gets the feature values as they were known at its time.

For every event row and its entity key, the feature row taken is the latest one whose event time is
at or before the event's time, whose created time (when the value was written, if the view has one)
is at or before it too (a late correction is invisible before it was written), and whose age is
within the view's time-to-live. Among rows with the same event time the one created last wins.
With no such row the event's feature values are missing (imputed downstream like any missing value).

How, in O(n log n): a feature row becomes visible at max(event time, created time). Sorted by that
moment, each entity's running best row (by event time, then created time) is what an event at that
moment sees; one backward as-of merge by entity key then finds, for each event, the last moment at
or before its time. A pairwise join of events with every feature row of their entity grew with
events x versions (10 versions: 10x the rows) before this.

This is the per-bucket step of a distributed join (pipelines/feature_tables): callers split both
sides by a hash of the entity key, so that every entity's rows meet in one bucket, and join each
bucket here. A missing value comes back as NaN (integers as floats); rows with a null key or time
never match.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

_ROW = "__lakeloop_event_row"
_AT = "__lakeloop_event_time"
_VISIBLE = "__lakeloop_visible_at"
_BEST = "__lakeloop_best_rank"


@dataclass(frozen=True)
class ViewJoin:
    """What the join needs of a feature view."""

    keys: tuple[str, ...]
    event_time: str  # in the feature table
    columns: tuple[str, ...]
    created_time: str | None = None
    ttl: timedelta | None = None


def _check(events: pd.DataFrame, features: pd.DataFrame, event_time: str, view: ViewJoin) -> None:
    missing = [c for c in (*view.keys, event_time) if c not in events.columns]
    missing += [c for c in (*view.keys, view.event_time, *view.columns) if c not in features.columns]
    if view.created_time and view.created_time not in features.columns:
        missing.append(view.created_time)
    if missing:
        raise ValueError(f"point-in-time join: missing columns {', '.join(sorted(set(missing)))}")
    clash = [c for c in view.columns if c in events.columns]
    if clash:
        raise ValueError(f"point-in-time join: the events already have columns {', '.join(clash)}")
    for key in view.keys:
        kinds = (_kind(events[key]), _kind(features[key]))
        if len(events) and len(features) and kinds[0] != kinds[1]:
            raise ValueError(
                f"point-in-time join: key '{key}' is {events[key].dtype} in the events but "
                f"{features[key].dtype} in the feature view"
            )


def _kind(column: pd.Series) -> str:
    """Integers and floats compare as numbers, everything else (strings) as text."""
    return "number" if pd.api.types.is_numeric_dtype(column) else "text"


def _utc(column: pd.Series) -> pd.Series:
    return pd.to_datetime(column, utc=True).astype("datetime64[us, UTC]")


def _instants(column: pd.Series) -> np.ndarray:
    """UTC timestamps as numpy datetime64 (a tz-aware column's to_numpy() is an array of objects)."""
    return column.to_numpy(dtype="datetime64[us]")


def _times(features: pd.DataFrame, view: ViewJoin) -> tuple[pd.Series, pd.Series]:
    """Each feature row's event time and created time (the event time when the view has none)."""
    seen = _utc(features[view.event_time])
    return seen, _utc(features[view.created_time]) if view.created_time else seen


def _moments(features: pd.DataFrame, view: ViewJoin, rank: np.ndarray) -> pd.DataFrame:
    """One row per feature row that can ever be seen: its keys, the moment it became visible, and
    the rank of the best row of its entity visible at that moment (`rank`: each row's place by event
    time, then created time)."""
    seen, created = _times(features, view)
    side = features[list(view.keys)].copy()
    side[_VISIBLE] = seen.where(seen >= created, created).where(seen.notna() & created.notna())
    side[_BEST] = rank
    side = side[side.notna().all(axis=1)].sort_values(_VISIBLE, kind="stable")
    side[_BEST] = side.groupby(list(view.keys), sort=False)[_BEST].cummax()
    return side


def as_of_join(events: pd.DataFrame, features: pd.DataFrame, event_time: str, view: ViewJoin) -> pd.DataFrame:
    """`events` with the view's columns added, in the events' order. The key columns must be present
    on both sides with comparable types (a number key against a text key is refused, naming it)."""
    _check(events, features, event_time, view)
    keys = list(view.keys)
    left = events[keys].copy()
    left[_AT] = _utc(events[event_time])
    left[_ROW] = np.arange(len(events))
    left = left[left.notna().all(axis=1)].sort_values(_AT, kind="stable")
    seen, created = _times(features, view)
    order = np.lexsort((_instants(created), _instants(seen)))  # order[r]: the row ranked r (0: oldest)
    rank = np.empty(len(features), np.int64)
    rank[order] = np.arange(len(features))
    moments = _moments(features, view, rank)
    matched = pd.merge_asof(left, moments, left_on=_AT, right_on=_VISIBLE, by=keys, direction="backward")
    matched = matched[matched[_BEST].notna()]
    rows = order[matched[_BEST].to_numpy(np.int64)]
    if view.ttl is not None:
        fresh = _instants(matched[_AT]) - _instants(seen)[rows] <= np.timedelta64(view.ttl)
        matched, rows = matched[fresh], rows[fresh]
    targets = matched[_ROW].to_numpy()
    joined = events.reset_index(drop=True).copy()
    for column in view.columns:
        values = pd.Series(features[column].to_numpy()[rows], index=targets)
        joined[column] = values.reindex(range(len(events))).to_numpy()
    return joined
