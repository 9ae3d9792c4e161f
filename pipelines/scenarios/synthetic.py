"""Demo data: a customer-churn table with a known nonlinear labelling rule and drift scenarios.

The rule is public on purpose: model behaviour tests derive expected directions and the best
achievable accuracy from it (labels are `score + N(0, NOISE_SD) > 0`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

import numpy as np
import pandas as pd
import pyarrow as pa

Drift = Literal["none", "covariate", "concept", "label"]
DRIFTS: tuple[str, ...] = get_args(Drift)

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
EVENT_TIME, LABEL = "event_time", "churned"  # the demo table's event time and label columns
NOISE_SD = 0.6
MISSING_CHARGES_RATE = 0.03
LABEL_DRIFT_POSITIVE_RATE = 0.6

PLANS = ("basic", "standard", "premium")
CONTRACTS = ("month-to-month", "one-year", "two-year")
REGIONS = ("north", "south", "east", "west")
# One row of the features, as a client sends it (the tests' and benchmarks' request body).
EXAMPLE_ROW = {
    "tenure_months": 3,
    "monthly_charges": 80.0,
    "support_calls": 1,
    "age": 40,
    "plan": "basic",
    "contract": "one-year",
    "region": "north",
}

SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field(EVENT_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tenure_months", pa.int64()),
        pa.field("monthly_charges", pa.float64()),
        pa.field("support_calls", pa.int64()),
        pa.field("age", pa.float64()),
        pa.field("plan", pa.string()),
        pa.field("contract", pa.string()),
        pa.field("region", pa.string()),
        pa.field(LABEL, pa.int64()),
    ]
)


def churn_score(features: pd.DataFrame, rule: Literal["base", "concept"] = "base") -> np.ndarray:
    """Noise-free churn propensity; positive means churn is more likely than not."""
    charges = (features["monthly_charges"].to_numpy(float) - 70.0) / 20.0
    tenure = features["tenure_months"].to_numpy(float)
    calls = features["support_calls"].to_numpy(float)
    age = (features["age"].to_numpy(float) - 45.0) / 12.0
    monthly = (features["contract"] == "month-to-month").to_numpy(float)
    two_year = (features["contract"] == "two-year").to_numpy(float)
    basic = (features["plan"] == "basic").to_numpy(float)
    if rule == "concept":
        # After a competitor's launch, long-tenure premium customers leave and price matters less.
        return -0.8 + 0.3 * np.tanh(charges) + 0.03 * tenure - 0.6 * basic - 0.2 * calls + 0.4 * two_year
    return (
        -0.9
        + 0.9 * np.tanh(charges)
        - 0.035 * tenure
        + 0.35 * calls
        + 0.9 * monthly
        - 0.6 * two_year
        + 0.5 * (calls >= 3) * monthly
        + 0.3 * basic
        + 0.1 * age**2
    )


def _features(rng: np.random.Generator, n: int, drift: Drift) -> pd.DataFrame:
    plan_p = (0.5, 0.3, 0.2) if drift != "covariate" else (0.25, 0.35, 0.4)
    charge_shift = 25.0 if drift == "covariate" else 0.0
    tenure = np.minimum(rng.gamma(shape=1.5, scale=14.0, size=n), 72).astype(np.int64)
    plan = rng.choice(PLANS, size=n, p=plan_p)
    plan_base = pd.Series(plan).map({"basic": 45.0, "standard": 70.0, "premium": 95.0}).to_numpy()
    charges = np.clip(plan_base + rng.normal(0, 12, n) + charge_shift, 15, 200).round(2)
    return pd.DataFrame(
        {
            "tenure_months": tenure,
            "monthly_charges": charges,
            "support_calls": rng.poisson(1.5, n).astype(np.int64),
            "age": np.clip(rng.normal(45, 12, n), 18, 90).round(1),
            "plan": plan,
            "contract": rng.choice(CONTRACTS, size=n, p=(0.55, 0.25, 0.2)),
            "region": rng.choice(REGIONS, size=n),
        }
    )


def _labelled(rng: np.random.Generator, n: int, drift: Drift) -> pd.DataFrame:
    frame = _features(rng, n, drift)
    rule = "concept" if drift == "concept" else "base"
    noise = rng.normal(0, NOISE_SD, n)
    frame[LABEL] = (churn_score(frame, rule) + noise > 0).astype(np.int64)
    return frame


def _prior_shifted(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """Label drift: the class balance moves while P(features | class) stays the same."""
    pool = _labelled(rng, 6 * n, "none")
    n_pos = round(n * LABEL_DRIFT_POSITIVE_RATE)
    positives = pool[pool[LABEL] == 1].head(n_pos)
    negatives = pool[pool[LABEL] == 0].head(n - n_pos)
    mixed = pd.concat([positives, negatives])
    return mixed.iloc[rng.permutation(len(mixed))].reset_index(drop=True)


def generate(rows: int, seed: int, drift: Drift = "none", start: datetime = DEFAULT_START) -> pa.Table:
    """Deterministic for (rows, seed, drift, start)."""
    if rows < 1:
        raise ValueError("rows must be at least 1")
    if drift not in DRIFTS:
        raise ValueError(f"unknown drift scenario '{drift}'; choose one of {', '.join(DRIFTS)}")
    rng = np.random.default_rng(seed)
    frame = _prior_shifted(rng, rows) if drift == "label" else _labelled(rng, rows, drift)
    missing = rng.random(rows) < MISSING_CHARGES_RATE
    frame["monthly_charges"] = frame["monthly_charges"].mask(missing)
    gaps = np.cumsum(rng.exponential(60.0, rows))
    frame.insert(0, EVENT_TIME, [start + timedelta(seconds=float(s)) for s in gaps])
    frame.insert(0, "customer_id", [f"C{seed:06d}-{i:08d}" for i in range(rows)])
    return pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False)


# SEA concepts (Street & Kim, "A streaming ensemble algorithm (SEA) for large-scale classification",
# KDD 2001): three features uniform on [0, 10]; the label is 1 when x1 + x2 <= theta (x3 is
# irrelevant); the four concepts use theta 8, 9, 7 and 9.5; 10% of the labels are flipped.
SEA_THETAS = (8.0, 9.0, 7.0, 9.5)
SEA_NOISE = 0.10
SEA_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field(EVENT_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("x1", pa.float64()),
        pa.field("x2", pa.float64()),
        pa.field("x3", pa.float64()),
        pa.field("label", pa.int64()),
    ]
)


def sea(rows: int, seed: int, concept: int, start: datetime = DEFAULT_START) -> pa.Table:
    """`rows` labelled rows of SEA concept `concept` (1-4), deterministic for (rows, seed, concept, start)."""
    if concept not in range(1, len(SEA_THETAS) + 1):
        raise ValueError(f"SEA has concepts 1-{len(SEA_THETAS)}, not {concept}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 10.0, size=(rows, 3))
    label = (x[:, 0] + x[:, 1] <= SEA_THETAS[concept - 1]).astype(np.int64)
    flipped = rng.random(rows) < SEA_NOISE
    label[flipped] = 1 - label[flipped]
    times = [start + timedelta(seconds=float(s)) for s in np.cumsum(rng.exponential(60.0, rows))]
    return pa.table(
        {
            "row_id": [f"S{seed:06d}-{i:08d}" for i in range(rows)],
            EVENT_TIME: times,
            "x1": x[:, 0],
            "x2": x[:, 1],
            "x3": x[:, 2],
            "label": label,
        },
        schema=SEA_SCHEMA,
    )


def bayes_accuracy(features: pd.DataFrame, rule: Literal["base", "concept"] = "base") -> float:
    """Best accuracy any model can reach on rows labelled by `rule` (it knows the score exactly);
    rows with missing charges (3%) are left out, their score is not defined."""
    from scipy.stats import norm

    return float(np.nanmean(norm.cdf(np.abs(churn_score(features, rule)) / NOISE_SD)))


def rule_accuracy(frame: pd.DataFrame, rule: Literal["base", "concept"], label: str = LABEL) -> float:
    """Accuracy on labelled rows of predicting with the noise-free score of `rule` (missing charges left out)."""
    score = churn_score(frame, rule)
    known = ~np.isnan(score)
    return float(np.mean((score[known] > 0) == frame[label].to_numpy()[known].astype(bool)))


# Agrawal's loan applicants (Agrawal, Imielinski & Swami, "Database Mining: A Performance Perspective",
# IEEE TKDE 1993; the generator of WEKA and MOA): six numeric features (salary, commission, age, hvalue,
# hyears, loan) and three categorical ones (elevel, car, zipcode), labelled by one of ten functions.
# The stream's concept change swaps function 2 (salary bands by age) for function 3 (education levels
# by age): after it, the label follows a categorical feature that did not matter before. 5% of the
# labels are flipped.
AGRAWAL_NOISE = 0.05
AGRAWAL_CATEGORICAL = ("elevel", "car", "zipcode")
AGRAWAL_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field(EVENT_TIME, pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(name, pa.float64()) for name in ("salary", "commission", "age", "hvalue", "hyears", "loan")),
        *(pa.field(name, pa.string()) for name in AGRAWAL_CATEGORICAL),
        pa.field("label", pa.int64()),
    ]
)


def _agrawal_function(function: int, salary: np.ndarray, age: np.ndarray, elevel: np.ndarray) -> np.ndarray:
    """Group A (label 0) or B (1) under function 2 or 3 of the paper (page 924)."""
    young, middle = age < 40, (age >= 40) & (age < 60)
    if function == 2:
        in_band = np.where(
            young,
            (salary >= 50_000) & (salary <= 100_000),
            np.where(middle, (salary >= 75_000) & (salary <= 125_000), (salary >= 25_000) & (salary <= 75_000)),
        )
    elif function == 3:
        in_band = np.where(
            young, np.isin(elevel, (0, 1)), np.where(middle, np.isin(elevel, (1, 2, 3)), np.isin(elevel, (2, 3, 4)))
        )
    else:
        raise ValueError(f"only Agrawal functions 2 and 3 are implemented, not {function}")
    return np.where(in_band, 0, 1).astype(np.int64)


def agrawal(rows: int, seed: int, function: int, start: datetime = DEFAULT_START) -> pa.Table:
    """`rows` labelled rows of Agrawal function `function` (2 or 3), deterministic for its arguments."""
    rng = np.random.default_rng(seed)
    salary = 20_000.0 + 130_000.0 * rng.random(rows)
    commission = np.where(salary >= 75_000.0, 0.0, 10_000.0 + 65_000.0 * rng.random(rows))
    age = rng.integers(20, 81, rows).astype(np.float64)
    elevel, car, zipcode = rng.integers(0, 5, rows), rng.integers(1, 21, rows), rng.integers(0, 9, rows)
    hvalue = (9.0 - zipcode) * 100_000.0 * (0.5 + rng.random(rows))
    hyears = rng.integers(1, 31, rows).astype(np.float64)
    loan = rng.random(rows) * 500_000.0
    label = _agrawal_function(function, salary, age, elevel)
    flipped = rng.random(rows) < AGRAWAL_NOISE
    label[flipped] = 1 - label[flipped]
    times = [start + timedelta(seconds=float(s)) for s in np.cumsum(rng.exponential(60.0, rows))]
    columns = {"salary": salary, "commission": commission, "age": age, "hvalue": hvalue, "hyears": hyears, "loan": loan}
    categorical = {"elevel": elevel, "car": car, "zipcode": zipcode}
    return pa.table(
        {
            "row_id": [f"A{seed:06d}-{i:08d}" for i in range(rows)],
            EVENT_TIME: times,
            **columns,
            **{name: [f"{name[0]}{v}" for v in values] for name, values in categorical.items()},
            "label": label,
        },
        schema=AGRAWAL_SCHEMA,
    )
