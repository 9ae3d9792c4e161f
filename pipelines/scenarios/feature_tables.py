"""The demo's churn data as feature tables: label events plus two views keyed by customer, a profile
(snapshots) and a daily usage aggregate with late corrections, such that a point-in-time join gives
back exactly the wide table's rows, and a join that ignores when values were written does not.

Customers come back: row i of the wide table is an event of customer i mod `customers`. For each
event the profile gets a snapshot a minute before it, and the usage view a row for the day (its
event time 2 h before the event, computed 1 h before). A share of usage rows is corrected later: a
row for the same customer and day, `monthly_charges` changed, written two days after the event. A
training set must not see a correction before it was written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.scenarios import synthetic

PROFILE_COLUMNS = ["age", "plan", "contract", "region"]
USAGE_COLUMNS = ["tenure_months", "monthly_charges", "support_calls"]
CORRECTED_SHARE = 0.1
CORRECTION = 15.0  # added to monthly_charges by a late correction


TABLES = {"labels": "label_events", "profile": "customer_profile", "usage": "daily_usage"}  # names under storage.root


@dataclass(frozen=True)
class FeatureTables:
    labels: pa.Table  # customer_id, event_time, churned
    profile: pa.Table  # customer_id, updated_at, PROFILE_COLUMNS
    usage: pa.Table  # customer_id, day, computed_at, USAGE_COLUMNS
    wide: pa.Table  # the same rows as one wide table (what a point-in-time join must give back)


def feature_tables(rows: int, seed: int, customers: int | None = None) -> FeatureTables:
    wide = synthetic.generate(rows, seed).to_pandas()
    count = customers or max(1, rows // 4)
    wide["customer_id"] = [f"C{seed:06d}-{i % count:08d}" for i in range(rows)]
    at = wide[synthetic.EVENT_TIME]
    profile = wide[["customer_id", *PROFILE_COLUMNS]].assign(updated_at=at - timedelta(minutes=1))
    usage = wide[["customer_id", *USAGE_COLUMNS]].assign(
        day=at - timedelta(hours=2), computed_at=at - timedelta(hours=1)
    )
    corrected = np.random.default_rng(seed + 1).random(rows) < CORRECTED_SHARE
    late = usage[corrected].assign(
        monthly_charges=usage.loc[corrected, "monthly_charges"] + CORRECTION,
        computed_at=at[corrected] + timedelta(days=2),
    )
    usage = pa.Table.from_pandas(pd.concat([usage, late], ignore_index=True), preserve_index=False)
    labels = wide[["customer_id", synthetic.EVENT_TIME, synthetic.LABEL]]
    return FeatureTables(
        pa.Table.from_pandas(labels, preserve_index=False),
        pa.Table.from_pandas(profile, preserve_index=False),
        usage,
        pa.Table.from_pandas(wide, preserve_index=False),
    )


def features_section(buckets: int = 4) -> dict:
    """The configuration's `features:` for these tables: a profile view of snapshots and a usage view
    with late corrections (a 90-day TTL), both keyed by customer_id."""
    return {
        "labels": {"table": TABLES["labels"], "event_time": "event_time"},
        "views": [
            {
                "name": "profile",
                "table": TABLES["profile"],
                "keys": ["customer_id"],
                "event_time": "updated_at",
                "columns": PROFILE_COLUMNS,
            },
            {
                "name": "usage",
                "table": TABLES["usage"],
                "keys": ["customer_id"],
                "event_time": "day",
                "created_time": "computed_at",
                "ttl_s": 90 * 86400,
                "columns": USAGE_COLUMNS,
            },
        ],
        "buckets": buckets,
    }
