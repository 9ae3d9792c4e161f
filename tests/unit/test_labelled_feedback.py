"""Labelled feedback shaped as a training table (pure Arrow, no services)."""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa

from pipelines.core.config import LakeloopConfig
from pipelines.training.labelled_feedback import training_table


def rows(tenure: list[float]) -> pd.DataFrame:
    n = len(tenure)
    return pd.DataFrame(
        {
            "request_id": [f"q{i}" for i in range(n)],
            "row": [0] * n,
            "served_at": [datetime(2026, 6, 1, tzinfo=UTC)] * n,
            "tenure_months": tenure,
            "monthly_charges": [80.0] * n,
            "support_calls": [1.0] * n,
            "age": [40.0] * n,
            "plan": ["basic"] * n,
            "contract": ["one-year"] * n,
            "region": ["north"] * n,
            "churned": [1] * n,
        }
    )


def test_columns_take_the_event_tables_types_where_the_values_allow(config: LakeloopConfig) -> None:
    like = pa.schema([pa.field("tenure_months", pa.int64()), pa.field("support_calls", pa.int64())])
    table = training_table(rows([3.0, 12.0]), config.dataset, like)
    assert table.schema.field("tenure_months").type == pa.int64()
    assert table.column("tenure_months").to_pylist() == [3, 12]
    assert table.schema.field("event_time").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("churned").type == pa.int64()


def test_a_value_the_event_type_cannot_hold_keeps_the_served_type(config: LakeloopConfig) -> None:
    like = pa.schema([pa.field("tenure_months", pa.int64())])
    table = training_table(rows([2.5, 12.0]), config.dataset, like)
    assert table.schema.field("tenure_months").type == pa.float64()
    assert table.column("tenure_months").to_pylist() == [2.5, 12.0]  # nothing truncated
