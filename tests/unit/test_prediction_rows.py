"""What one served request writes to the prediction log, built from its columns."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pytest

from pipelines.adapters.prediction_log import prediction_rows
from pipelines.core.config import parse_config
from pipelines.core.model_output import Scored
from serve.app import _as_lists
from serve.schemas import RecordValidator
from tests.helpers import demo_raw_config

AT = datetime(2026, 11, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    return parse_config(demo_raw_config(tmp_path_factory.mktemp("rows"))).dataset


def test_rows_carry_each_feature_in_its_logged_type_and_missing_values_as_null(dataset) -> None:
    numeric, categorical = dataset.numeric[0], dataset.categorical[0]
    missing = dict.fromkeys(dataset.feature_names)
    columns = RecordValidator(dataset, 10).columns([{**missing, numeric: 42.0, categorical: 7}, missing])
    outputs = [{"prediction": "yes", "probability_yes": np.float64(0.9).item()}, {"prediction": "no"}]
    rows = prediction_rows("r1", "m", "3", AT, _as_lists(columns), outputs, dataset)
    assert [r["row"] for r in rows] == [0, 1]
    assert rows[0][numeric] == 42.0 and isinstance(rows[0][numeric], float) and rows[1][numeric] is None
    assert rows[0][categorical] == "7" and rows[1][categorical] is None
    assert json.loads(rows[0]["output"]) == outputs[0] and rows[1]["prediction"] == "no"
    assert all(set(dataset.feature_names) <= set(r) for r in rows)


def test_a_feature_column_shorter_than_the_outputs_is_an_error(dataset) -> None:
    features = {name: [1.0] for name in dataset.feature_names}
    with pytest.raises(ValueError):
        prediction_rows("r1", "m", "3", AT, features, [{"prediction": 0}, {"prediction": 1}], dataset)


def test_output_rows_are_plain_python_values() -> None:
    scored = Scored({"prediction": np.array(["yes", "no"], dtype=object), "probability_yes": np.array([0.75, 0.25])})
    rows = scored.rows()
    assert rows == [{"prediction": "yes", "probability_yes": 0.75}, {"prediction": "no", "probability_yes": 0.25}]
    assert all(type(r["probability_yes"]) is float for r in rows)
    json.dumps(rows)  # no numpy scalars left
