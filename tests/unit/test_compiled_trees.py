"""The trees compiled to Python answer what xgboost answers, row by row, for every objective lakeloop
trains (binary, multiclass, regression), with numeric and categorical splits, missing values, and
categories the training rows never had."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost

from pipelines.core.compiled_trees import compile_trees
from pipelines.core.estimators import COMPILED_ROWS, XGBoostEstimator

ROWS = 3000
TYPES = ["q", "q", "c", "c"]  # two numeric columns, then two categoricals as slot indices


def _features(rng: np.random.Generator, rows: int, unknown: bool = False) -> np.ndarray:
    matrix = np.column_stack(
        [
            rng.normal(size=rows),
            rng.uniform(0, 10, rows),
            rng.integers(0, 12 if unknown else 6, rows),  # slots 6-11: never in training
            rng.integers(0, 3, rows),
        ]
    ).astype(np.float32)
    matrix[rng.random(matrix.shape) < 0.05] = np.nan
    return matrix


def _target(matrix: np.ndarray, task: str, rng: np.random.Generator) -> np.ndarray:
    score = np.nan_to_num(matrix[:, 0]) + 0.3 * np.nan_to_num(matrix[:, 1]) + np.isin(matrix[:, 2], [1, 4]) * 1.5
    score = score + rng.normal(scale=0.5, size=len(score))
    if task == "regression":
        return score
    if task == "binary":
        return (score > np.median(score)).astype(np.float32)
    return np.digitize(score, np.quantile(score, [0.33, 0.66])).astype(np.float32)


OBJECTIVES = {
    "binary": ({"objective": "binary:logistic"}, "classification", 2),
    "multiclass": ({"objective": "multi:softprob", "num_class": 3}, "classification", 3),
    "regression": ({"objective": "reg:squarederror"}, "regression", 0),
}


@pytest.fixture(params=list(OBJECTIVES))
def estimator(request: pytest.FixtureRequest) -> XGBoostEstimator:
    params, task, classes = OBJECTIVES[request.param]
    rng = np.random.default_rng(7)
    matrix = _features(rng, ROWS)
    data = xgboost.DMatrix(matrix, _target(matrix, request.param, rng), feature_types=TYPES, enable_categorical=True)
    settings = {"tree_method": "hist", "grow_policy": "lossguide", "max_leaves": 31, "eta": 0.1, "nthread": 1}
    booster = xgboost.train({**settings, **params, "max_cat_to_onehot": 1}, data, 60)
    return XGBoostEstimator("xgboost", booster.save_raw("ubj"), task, classes)


def test_compiled_trees_answer_what_xgboost_answers(estimator: XGBoostEstimator) -> None:
    rows = _features(np.random.default_rng(11), 2000, unknown=True)
    expected = np.asarray(estimator.booster.inplace_predict(rows), np.float64)
    compiled = estimator.compiled
    assert compiled is not None
    assert len(compiled.trees) >= 60
    one_at_a_time = np.concatenate([estimator.outputs(rows[i : i + 1]) for i in range(len(rows))])
    through_xgboost = estimator.outputs(rows)  # more than COMPILED_ROWS rows: xgboost itself
    assert len(rows) > COMPILED_ROWS
    if estimator.task == "regression":
        assert np.allclose(one_at_a_time, expected, atol=1e-4, rtol=1e-5)
    else:
        expected = expected if expected.ndim == 2 else np.column_stack([1 - expected, expected])
        assert np.allclose(one_at_a_time, expected, atol=1e-6)
        assert np.allclose(through_xgboost, expected, atol=1e-6)


def test_categorical_splits_are_in_the_model(estimator: XGBoostEstimator) -> None:
    """The comparison above means something only if the trees split on categories and meet NaNs."""
    import json

    trees = json.loads(bytes(estimator.booster.save_raw("json")))["learner"]["gradient_booster"]["model"]["trees"]
    assert any(1 in t["split_type"] for t in trees)


def test_a_model_too_large_to_gain_is_left_to_xgboost() -> None:
    node = {"left_children": [-1] * 40_000, "right_children": [-1] * 40_000, "tree_param": {}}
    model = {"learner": {"gradient_booster": {"name": "gbtree", "model": {"trees": [node], "tree_info": [0]}}}}
    assert compile_trees(model, 1) is None
