"""Request parsing and validation for the Serve app, without Serve."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.config import LakeloopConfig
from serve.schemas import RecordValidator, RequestError, mlflow_records, predict_request_model

GOOD = {
    "tenure_months": 3,
    "monthly_charges": 80.5,
    "support_calls": 1,
    "age": 40,
    "plan": "basic",
    "contract": "one-year",
    "region": "north",
}


@pytest.fixture
def validator(config: LakeloopConfig) -> RecordValidator:
    return RecordValidator(config.dataset, max_rows=3)


def test_all_mlflow_formats_give_the_same_records() -> None:
    columns = list(GOOD)
    forms = [
        {"dataframe_records": [GOOD]},
        {"dataframe_split": {"columns": columns, "data": [[GOOD[c] for c in columns]]}},
        {"instances": [GOOD]},
        {"inputs": {c: [v] for c, v in GOOD.items()}},
    ]
    assert all(mlflow_records(form) == [GOOD] for form in forms)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([GOOD], "expected a JSON object"),
        ({"rows": [GOOD]}, "expected exactly one of"),
        ({"dataframe_records": [GOOD], "instances": [GOOD]}, "expected exactly one of"),
        ({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}, "dataframe_split.data[0]"),
        ({"inputs": {"a": [1], "b": [1, 2]}}, "lists of equal length"),
    ],
)
def test_malformed_payloads(body: object, message: str) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
        mlflow_records(body)


def test_valid_records_become_columns_in_config_order(validator: RecordValidator, config: LakeloopConfig) -> None:
    columns = validator.columns([GOOD, {**GOOD, "monthly_charges": None}])
    assert list(columns) == config.dataset.feature_names
    assert np.isnan(columns["monthly_charges"]).tolist() == [False, True]


@pytest.mark.parametrize(
    ("records", "status", "message"),
    [
        ([], 422, "empty batch"),
        ([GOOD] * 4, 413, "exceeds the limit of 3"),
        ([{k: v for k, v in GOOD.items() if k != "age"}], 422, "records[0].age: Field required"),
        ([GOOD, {**GOOD, "colour": "red"}], 422, "records[1]: unknown fields (not configured features): 'colour'"),
        ([{**GOOD, "age": "40"}], 422, "records[0].age: Input should be a valid number"),
        ([{**GOOD, "age": float("nan")}], 422, "records[0].age: Input should be a finite number"),
        ([{**GOOD, "plan": 1.5}], 422, "records[0].plan"),
        ("not a list", 422, "must be a list"),
    ],
)
def test_bad_records_name_the_field(validator: RecordValidator, records: object, status: int, message: str) -> None:
    with pytest.raises(RequestError) as err:
        validator.columns(records)
    assert err.value.status == status
    assert message in err.value.message


def test_typed_request_model_documents_every_feature(config: LakeloopConfig) -> None:
    schema = predict_request_model(config.dataset, 10).model_json_schema()
    record = schema["$defs"]["FeatureRecord"]
    assert set(record["required"]) == set(config.dataset.feature_names)
    assert record["additionalProperties"] is False


def test_feedback_labels_are_checked_against_the_task(config) -> None:
    from pydantic import ValidationError

    from serve.schemas import feedback_request_model

    classification = feedback_request_model(config.dataset, max_rows=1000)
    assert classification.model_validate({"request_id": "r", "row": 3, "label": 1}).label == 1
    for bad in (
        {"request_id": "r", "label": 7},
        {"request_id": "r", "row": 1000, "label": 1},
        {"request_id": "r", "row": 2**31, "label": 1},
        {"request_id": "", "label": 1},
    ):
        with pytest.raises(ValidationError):
            classification.model_validate(bad)
    regression_dataset = config.dataset.model_copy(update={"task": "regression", "classes": None})
    regression = feedback_request_model(regression_dataset, max_rows=1000)
    assert regression.model_validate({"request_id": "r", "label": 12.5}).label == 12.5
    for bad_label in ("abc", True, float("nan")):  # one "abc" used to break every later monitor pass
        with pytest.raises(ValidationError):
            regression.model_validate({"request_id": "r", "label": bad_label})


def test_a_record_of_many_unknown_keys_is_one_short_error(validator: RecordValidator) -> None:
    """80,000 unknown keys (a 1 MB body) used to be 80,000 errors: half a second of a replica's event
    loop and a 5 MB answer."""
    with pytest.raises(RequestError) as err:
        validator.columns([{**GOOD, **{f"k{i}": 0 for i in range(80_000)}}])
    assert err.value.details == [
        "records[0]: unknown fields (not configured features): 'k0', 'k1', 'k10', 'k100', 'k1000' and 79995 more"
    ]


def test_the_errors_of_a_422_are_capped_and_counted(config: LakeloopConfig) -> None:
    from serve.schemas import MAX_DETAILS

    with pytest.raises(RequestError) as err:
        RecordValidator(config.dataset, max_rows=1000).columns([{**GOOD, "age": "x"}] * 100)
    assert len(err.value.details) == MAX_DETAILS + 1
    assert err.value.details[-1] == f"... and {100 - MAX_DETAILS} more errors"
