"""Point-in-time joins on a Ray cluster: label events against a feature view, in parallel.

Both sides are split by a hash of the view's entity key into `buckets` parts, one task per input
block (each returns one part per bucket), so every entity's events and feature rows meet in one
bucket; one task per bucket then joins its part with core/point_in_time's as-of join. Nothing passes
through the driver but object references. The joined blocks come back in bucket order, not the
events' order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import ray
import ray.data

from pipelines.core.point_in_time import ViewJoin, as_of_join


def bucket_of(frame: pd.DataFrame, keys: list[str], buckets: int) -> np.ndarray:
    """Each row's bucket, the same for equal keys on both sides (numbers hashed as float64, so an
    integer key in one table meets the same value stored as a float in the other)."""
    normalised = pd.DataFrame(
        {k: frame[k].astype("float64") if pd.api.types.is_numeric_dtype(frame[k]) else frame[k] for k in keys}
    )
    return (pd.util.hash_pandas_object(normalised, index=False).to_numpy() % np.uint64(buckets)).astype(np.int64)


def _split(block: pa.Table, keys: list[str], buckets: int) -> tuple[pa.Table, ...] | pa.Table:
    codes = bucket_of(block.select(keys).to_pandas(), keys, buckets)
    order = np.argsort(codes, kind="stable")  # one take, then a slice per bucket (not a filter per bucket)
    grouped = block.take(pa.array(order))
    bounds = np.searchsorted(codes[order], np.arange(buckets + 1))
    parts = tuple(grouped.slice(bounds[b], bounds[b + 1] - bounds[b]) for b in range(buckets))
    return parts if buckets > 1 else parts[0]


def _join_bucket(event_time: str, view: ViewJoin, events_count: int, *parts: pa.Table) -> pa.Table:
    events = pa.concat_tables(parts[:events_count], promote_options="permissive").to_pandas()
    features = pa.concat_tables(parts[events_count:], promote_options="permissive").to_pandas()
    return pa.Table.from_pandas(as_of_join(events, features, event_time, view), preserve_index=False)


def join_view(
    events: ray.data.Dataset, features: ray.data.Dataset, event_time: str, view: ViewJoin, buckets: int
) -> ray.data.Dataset:
    """`events` with the view's columns added as of each event's time (see core/point_in_time);
    `features` holds the view's key, time and feature columns."""
    split = ray.remote(num_returns=buckets)(_split)
    keys = list(view.keys)
    event_parts = [_as_list(split.remote(ref, keys, buckets)) for ref in events.to_arrow_refs()]
    feature_parts = [
        _as_list(split.remote(ref, keys, buckets)) for ref in features.select_columns(_needed(view)).to_arrow_refs()
    ]
    join = ray.remote(_join_bucket)
    joined = [
        join.remote(event_time, view, len(event_parts), *(p[b] for p in event_parts), *(p[b] for p in feature_parts))
        for b in range(buckets)
    ]
    return ray.data.from_arrow_refs(joined)


def _needed(view: ViewJoin) -> list[str]:
    return list(
        dict.fromkeys([*view.keys, view.event_time, *([view.created_time] if view.created_time else []), *view.columns])
    )


def _as_list(refs) -> list:
    return refs if isinstance(refs, list) else [refs]
