"""The fused feature transform against a single-process pandas reference on the same rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.core.feature_transform import FittedTransform, Statistics, statistics

NUMERIC, CATEGORICAL = ["tenure", "charges"], ["plan", "region"]


def training_rows(n: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "tenure": rng.integers(0, 72, n).astype(float),
            "charges": rng.normal(60, 20, n),
            "plan": rng.choice(["basic", "premium", "pro"], n, p=[0.5, 0.3, 0.2]).astype(object),
            "region": rng.choice([3, 1, 2], n).astype(object),  # integer-coded
        }
    )
    for name in frame.columns:  # ~10% nulls everywhere
        frame.loc[rng.random(n) < 0.1, name] = None
    return frame


def reference(train: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Mean-impute and standardise (population SD of the imputed column); mode-impute and one-hot over
    the sorted training values; unknown values -> all zeros."""
    parts = []
    for name in NUMERIC:
        mean = train[name].mean()
        sd = train[name].fillna(mean).std(ddof=0)
        parts.append(((rows[name].astype(float).fillna(mean) - mean) / sd).to_numpy()[:, None])
    for name in CATEGORICAL:
        values = rows[name].where(rows[name].notna(), train[name].mode().iloc[0])
        vocabulary = sorted(train[name].dropna().unique())
        parts.append(np.stack([(values == c).to_numpy(float) for c in vocabulary], axis=1))
    return np.concatenate(parts, axis=1).astype(np.float32)


def expanded(fitted: FittedTransform, rows) -> np.ndarray:
    """The transform as a network reads it: one column per numeric feature and per categorical slot."""
    return fitted.onehot(fitted.transform(rows).matrix)


def fit_in_batches(train: pd.DataFrame, batch_rows: int) -> FittedTransform:
    merged = Statistics()
    for start in range(0, len(train), batch_rows):
        table = pa.Table.from_pandas(train.iloc[start : start + batch_rows], preserve_index=False)
        part = statistics({n: table.column(n) for n in table.column_names}, NUMERIC, CATEGORICAL)
        merged = merged.merge(Statistics.from_json(part.to_json()))  # as the Ray pass ships them
    return FittedTransform.fit(merged, NUMERIC, CATEGORICAL)


@pytest.fixture(scope="module")
def train() -> pd.DataFrame:
    return training_rows()


@pytest.mark.parametrize("batch_rows", [500, 64, 7])
def test_fitting_in_any_batches_equals_the_reference(train: pd.DataFrame, batch_rows: int) -> None:
    fitted = fit_in_batches(train, batch_rows)
    rows = training_rows(200, seed=1)
    np.testing.assert_allclose(expanded(fitted, rows), reference(train, rows), rtol=1e-5, atol=1e-5)
    assert fitted.null_counts == {name: int(train[name].isna().sum()) for name in NUMERIC + CATEGORICAL}
    assert (fitted.width, fitted.onehot_width) == (2 + 2, 2 + 3 + 3)


def test_a_one_row_batch_and_arrow_columns_give_the_same_row(train: pd.DataFrame) -> None:
    fitted = fit_in_batches(train, 100)
    rows = training_rows(50, seed=2)
    whole = fitted.transform(rows).matrix
    table = pa.Table.from_pandas(rows, preserve_index=False)
    arrow = fitted.transform({n: table.column(n) for n in table.column_names}).matrix
    one = np.vstack([fitted.transform(rows.iloc[[i]]).matrix for i in range(len(rows))])
    np.testing.assert_array_equal(whole, arrow)
    np.testing.assert_array_equal(whole, one)


def test_a_batch_whose_columns_are_all_null_is_imputed(train: pd.DataFrame) -> None:
    fitted = fit_in_batches(train, 500)
    rows = pd.DataFrame({name: [None, None, None] for name in NUMERIC + CATEGORICAL})
    np.testing.assert_allclose(expanded(fitted, rows), reference(train, rows), atol=1e-6)
    # numeric nulls sit at the mean (0 after scaling); categorical nulls at the mode's one-hot
    assert (expanded(fitted, rows).sum(axis=1) == 2).all()


def test_unknown_categories_encode_as_zeros_and_are_counted(train: pd.DataFrame) -> None:
    fitted = fit_in_batches(train, 500)
    rows = pd.DataFrame(
        {
            "tenure": [1.0, 2.0, 3.0, 4.0],
            "charges": [50.0, 60.0, 70.0, 80.0],
            "plan": ["enterprise", "\ud800", "basic", None],  # unseen, a lone surrogate, known, null
            "region": [9, "3", 3.0, True],  # unseen, another type, equal to 3, equal to 1
        }
    )
    encoded = fitted.transform(rows)
    assert np.isnan(encoded.matrix[:2, 2]).all() and encoded.matrix[2, 2] == 0  # unknown: no slot; basic: slot 0
    plan = fitted.onehot(encoded.matrix)[:, 2:5]
    assert plan[:2].sum() == 0 and plan[2].tolist() == [1, 0, 0] and plan[3].sum() == 1
    region = fitted.onehot(encoded.matrix)[:, 5:8]
    assert region[:2].sum() == 0 and region[2].tolist() == [0, 0, 1] and region[3].tolist() == [1, 0, 0]
    assert encoded.unknown == {"plan": 2, "region": 2}


def test_a_constant_or_empty_training_column_is_centred_not_divided_by_zero() -> None:
    train = pd.DataFrame({"tenure": [5.0] * 10, "charges": [None] * 10, "plan": [None] * 10, "region": [1] * 10})
    fitted = fit_in_batches(train, 10)
    encoded = fitted.transform(pd.DataFrame({"tenure": [7.0], "charges": [3.0], "plan": ["basic"], "region": [1]}))
    assert fitted.onehot(encoded.matrix).tolist() == [[2.0, 3.0, 1.0]]  # no plan vocabulary: no plan columns
    assert np.isnan(encoded.matrix[0, 2]) and encoded.unknown == {"plan": 1, "region": 0}


def test_a_value_that_is_not_a_number_is_an_error_naming_its_feature(train: pd.DataFrame) -> None:
    fitted = fit_in_batches(train, 500)
    rows = training_rows(3, seed=3).assign(tenure=["a", 1, 2])
    for columns in (rows, pa.Table.from_pandas(rows.assign(tenure=["a", "1", "2"]))):
        with pytest.raises(ValueError, match="feature 'tenure' must be numeric"):
            fitted.transform(columns)


def test_a_request_sized_batch_encodes_as_a_large_one(train: pd.DataFrame) -> None:
    """Small batches look categories up in a dict, large ones with pandas' get_indexer: same codes,
    odd values included (a bool, 2.0 for 2, an unhashable list, NaN, None, a lone surrogate)."""
    fitted = FittedTransform.fit(statistics(train.to_dict("series"), NUMERIC, CATEGORICAL), NUMERIC, CATEGORICAL)
    odd = [True, 2.0, ["premium"], float("nan"), None, "\ud800", "pro", 3, "3"]
    rows = pd.DataFrame(
        {
            "tenure": np.arange(len(odd), dtype=float),
            "charges": np.ones(len(odd)),
            "plan": pd.Series(odd, dtype=object),
            "region": pd.Series(odd[::-1], dtype=object),
        }
    )
    large = pd.concat([rows] * 40, ignore_index=True)  # 360 rows: above the dict path's size
    whole = fitted.transform(large.to_dict("series"))
    one_by_one = [fitted.transform(rows.iloc[[i]].to_dict("series")) for i in range(len(rows))]
    assert np.array_equal(whole.matrix[: len(rows)], np.concatenate([e.matrix for e in one_by_one]), equal_nan=True)
    for name in CATEGORICAL:
        assert whole.unknown[name] == 40 * sum(e.unknown[name] for e in one_by_one)


def test_arrow_string_columns_are_looked_up_in_arrow_exactly_as_python_values(train: pd.DataFrame) -> None:
    fitted = fit_in_batches(train, 500)
    plan = ["enterprise", None, "basic", "pro", "", "premium", None, "Basic"]  # unknowns, nulls, knowns
    rows = pd.DataFrame(
        {"tenure": [1.0] * 8, "charges": [50.0] * 8, "plan": pd.Series(plan, dtype=object), "region": [3] * 8}
    )
    chunked = pa.chunked_array([pa.array(plan[:3]), pa.array([], pa.string()), pa.array(plan[3:])])
    as_arrow = {**{n: rows[n] for n in NUMERIC + ["region"]}, "plan": chunked}
    python, arrow = fitted.transform(rows), fitted.transform(as_arrow)
    large = fitted.transform({**as_arrow, "plan": pa.array(plan, pa.large_string())})
    np.testing.assert_array_equal(python.matrix, arrow.matrix)  # NaN (no slot) where the other has NaN
    np.testing.assert_array_equal(python.matrix, large.matrix)
    assert python.unknown == arrow.unknown == large.unknown == {"plan": 3, "region": 0}
    assert fitted._arrow_vocabularies[CATEGORICAL.index("region")] is None  # integer-coded: the Python path


def test_a_categorical_of_any_cardinality_costs_its_kept_slots_and_rare_values_share_one() -> None:
    """8,000 values, 3 kept: the most frequent ones each have a slot, every rarer one (and every value
    never seen) takes the "other" slot after them; only never-seen values count as unknown."""
    values = [f"v{i:04d}" for i in range(8000)]
    common = ["v0007", "v0100", "v2000"]
    train = pd.DataFrame({"x": np.arange(8000 + 300, dtype=float), "city": values + common * 100})
    stats = statistics(train.to_dict("series"), ["x"], ["city"])
    fitted = FittedTransform.fit(stats, ["x"], ["city"], max_categories=3)
    assert fitted.vocabularies == (tuple(common),) and fitted.slots == (4,)
    assert (fitted.width, fitted.onehot_width) == (2, 1 + 4)
    rows = pd.DataFrame({"x": [0.0] * 4, "city": ["v2000", "v0001", "nowhere", None]})
    for columns in (rows, {"x": rows["x"], "city": pa.array(rows["city"], pa.string())}):
        encoded = fitted.transform(columns)
        assert encoded.matrix[:, 1].tolist() == [
            2.0,
            3.0,
            3.0,
            0.0,
        ]  # kept, rare -> other, unknown -> other, null -> mode
        assert encoded.unknown == {"city": 1}
    large = pd.concat([rows] * 100, ignore_index=True)  # the get_indexer path
    assert fitted.transform(large).unknown == {"city": 100}
    assert fitted.transform(large).matrix[:4, 1].tolist() == [2.0, 3.0, 3.0, 0.0]
