"""The validator's message for each bad case, on in-memory Arrow data (no Delta, no Ray)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from pipelines.core.config import LakeloopConfig
from pipelines.core.table_checks import check_table, collect_stats, schema_fingerprint
from pipelines.scenarios import synthetic


def problems(table: pa.Table, config: LakeloopConfig) -> list[str]:
    data = pads.dataset(table)
    return check_table(data.schema, collect_stats(data, config.dataset), config.dataset)


@pytest.fixture
def good() -> pa.Table:
    return synthetic.generate(300, 1)


def replace(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def test_demo_table_passes(good: pa.Table, config: LakeloopConfig) -> None:
    assert problems(good, config) == []


def test_missing_column(good: pa.Table, config: LakeloopConfig) -> None:
    assert problems(good.drop_columns(["support_calls"]), config) == ["column 'support_calls': missing from the table"]


def test_wrong_types(good: pa.Table, config: LakeloopConfig) -> None:
    table = replace(good, "age", pc.cast(good.column("age"), pa.string()))
    table = replace(table, "event_time", pa.array(["yesterday"] * len(good)))
    found = problems(table, config)
    assert "column 'age': expected a numeric type (int, float, decimal), found string" in found
    assert "column 'event_time': expected a timestamp or date, found string" in found


def test_all_null_and_constant_features(good: pa.Table, config: LakeloopConfig) -> None:
    table = replace(good, "age", pa.nulls(len(good), pa.float64()))
    table = replace(table, "plan", pa.array(["basic"] * len(good)))
    table = replace(table, "support_calls", pa.array([2] * len(good), pa.int64()))
    found = problems(table, config)
    assert "column 'age': every value is null" in found
    assert "column 'plan': constant (every non-null value is 'basic'), it carries no signal" in found
    assert any(p.startswith("column 'support_calls': constant") for p in found)


def test_non_finite_numeric(good: pa.Table, config: LakeloopConfig) -> None:
    values = good.column("age").to_pylist()
    values[3] = float("nan")
    assert problems(replace(good, "age", pa.array(values)), config) == ["column 'age': 1 NaN or infinite values"]


def test_invalid_and_missing_labels(good: pa.Table, config: LakeloopConfig) -> None:
    labels = good.column("churned").to_pylist()
    labels[0], labels[1], labels[2] = 2, 7, None
    found = problems(replace(good, "churned", pa.array(labels, pa.int64())), config)
    assert "column 'churned': label values not in classes [0, 1]: 2, 7" in found
    assert "column 'churned': 1 rows have no label" in found


def test_empty_table(good: pa.Table, config: LakeloopConfig) -> None:
    assert problems(good.slice(0, 0), config) == ["table is empty: no rows to train on"]


def test_regression_label_must_be_numeric(good: pa.Table, raw_config: dict) -> None:
    from pipelines.core.config import parse_config

    raw_config["dataset"].update(task="regression", label="plan")
    raw_config["dataset"]["features"] = [f for f in raw_config["dataset"]["features"] if f["name"] != "plan"]
    raw_config["dataset"].pop("classes")
    raw_config["gate"].update(metric="rmse", thresholds={})
    found = problems(good, parse_config(raw_config))
    assert found == ["column 'plan': expected a numeric type for regression, found string"]


def test_fingerprint_tracks_types_of_configured_columns_only(good: pa.Table) -> None:
    columns = ["age", "plan"]
    same = schema_fingerprint(good.schema, columns)
    assert same == schema_fingerprint(good.drop_columns(["region"]).schema, columns)
    changed = replace(good, "age", pc.cast(good.column("age"), pa.float32()))
    assert schema_fingerprint(changed.schema, columns) != same
