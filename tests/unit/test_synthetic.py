"""Generator: deterministic per seed, and each drift scenario changes what it claims to."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from pipelines.scenarios import synthetic

N = 8000


def frame(drift: str = "none", seed: int = 3) -> pd.DataFrame:
    return synthetic.generate(N, seed, drift).to_pandas()


def rule_agreement(df: pd.DataFrame, rule: str) -> float:
    """Share of labels matching the noise-free rule's verdict (Bayes rate if the rule is right)."""
    labelled = df.dropna()
    return float(np.mean((synthetic.churn_score(labelled, rule) > 0) == (labelled["churned"] == 1)))


def test_same_seed_same_rows_different_seed_different_rows() -> None:
    assert synthetic.generate(500, 11).equals(synthetic.generate(500, 11))
    assert not synthetic.generate(500, 11).equals(synthetic.generate(500, 12))


def test_schema_and_realism() -> None:
    df = frame()
    assert list(df.columns) == synthetic.SCHEMA.names
    assert df["event_time"].is_monotonic_increasing
    assert 0.2 < df["churned"].mean() < 0.45
    assert 0.01 < df["monthly_charges"].isna().mean() < 0.06
    assert set(df["plan"]) == set(synthetic.PLANS)


def test_labels_follow_the_rule_up_to_noise() -> None:
    df = frame()
    # The noise-free rule agrees with labels at close to its Bayes accuracy; a constant guess does not.
    assert rule_agreement(df, "base") == pytest.approx(synthetic.bayes_accuracy(df.dropna()), abs=0.02)
    assert rule_agreement(df, "base") > 1 - df["churned"].mean() + 0.1


def test_covariate_drift_moves_features_not_the_rule() -> None:
    base, drifted = frame(), frame("covariate", seed=4)
    charges = ks_2samp(base["monthly_charges"].dropna(), drifted["monthly_charges"].dropna())
    assert charges.pvalue < 1e-6
    assert drifted["monthly_charges"].mean() - base["monthly_charges"].mean() > 15
    assert rule_agreement(drifted, "base") == pytest.approx(synthetic.bayes_accuracy(drifted.dropna()), abs=0.02)


def test_concept_drift_changes_the_rule_not_the_features() -> None:
    base, drifted = frame(), frame("concept", seed=4)
    for column in ("tenure_months", "monthly_charges", "age"):
        assert ks_2samp(base[column].dropna(), drifted[column].dropna()).pvalue > 0.001
    assert rule_agreement(drifted, "base") < rule_agreement(base, "base") - 0.1
    assert rule_agreement(drifted, "concept") > rule_agreement(drifted, "base")


def test_label_drift_changes_class_balance() -> None:
    base, drifted = frame(), frame("label", seed=4)
    assert drifted["churned"].mean() == pytest.approx(synthetic.LABEL_DRIFT_POSITIVE_RATE, abs=0.01)
    assert base["churned"].mean() < 0.4
    # P(features | class) is unchanged: churners look alike in both tables.
    churners = ks_2samp(base[base.churned == 1]["tenure_months"], drifted[drifted.churned == 1]["tenure_months"])
    assert churners.pvalue > 0.001


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rows"):
        synthetic.generate(0, 1)
    with pytest.raises(ValueError, match="unknown drift"):
        synthetic.generate(10, 1, "seasonal")  # type: ignore[arg-type]


def test_sea_concepts_follow_the_paper() -> None:
    rows = synthetic.sea(20_000, 3, concept=3).to_pandas()
    assert rows[["x1", "x2", "x3"]].min().min() >= 0 and rows[["x1", "x2", "x3"]].max().max() <= 10
    rule = (rows["x1"] + rows["x2"] <= 7.0).astype(int)
    assert (rule == rows["label"]).mean() == pytest.approx(0.9, abs=0.01)  # 10% of labels flipped
    # x3 is irrelevant; the concept change moves only the threshold
    assert abs(np.corrcoef(rows["x3"], rows["label"])[0, 1]) < 0.03
    later = synthetic.sea(20_000, 4, concept=4).to_pandas()
    assert later["label"].mean() > rows["label"].mean() + 0.15  # theta 9.5 labels more rows positive
    with pytest.raises(ValueError, match="concepts 1-4"):
        synthetic.sea(10, 1, concept=5)
