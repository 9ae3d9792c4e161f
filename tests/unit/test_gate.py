from __future__ import annotations

import numpy as np
import pytest

from pipelines.core import metrics
from pipelines.core.config import GateConfig
from pipelines.core.gate import decide

GATE = GateConfig(metric="roc_auc", min_improvement=0.01, thresholds={"roc_auc": 0.7, "log_loss": 0.6})


def test_first_model_is_promoted_when_it_passes_thresholds() -> None:
    decision = decide({"roc_auc": 0.8, "log_loss": 0.4}, None, GATE)
    assert decision.promote and "first model" in decision.reason


def test_thresholds_apply_in_the_metric_direction() -> None:
    low_auc = decide({"roc_auc": 0.65, "log_loss": 0.4}, None, GATE)
    high_loss = decide({"roc_auc": 0.9, "log_loss": 0.9}, None, GATE)
    assert not low_auc.promote and "roc_auc 0.6500 is below the floor 0.7000" in low_auc.reason
    assert not high_loss.promote and "log_loss 0.9000 is above the ceiling 0.6000" in high_loss.reason


def test_margin_over_champion() -> None:
    champion = {"roc_auc": 0.80, "log_loss": 0.4}
    assert decide({"roc_auc": 0.82, "log_loss": 0.4}, champion, GATE).promote
    near = decide({"roc_auc": 0.805, "log_loss": 0.4}, champion, GATE)
    assert not near.promote and "does not beat champion 0.8000 by the margin 0.01" in near.reason


def test_lower_is_better_metric() -> None:
    gate = GateConfig(metric="rmse", min_improvement=0.1)
    assert decide({"rmse": 1.0}, {"rmse": 1.2}, gate).promote
    assert not decide({"rmse": 1.15}, {"rmse": 1.2}, gate).promote


def test_missing_or_nan_metric_is_refused() -> None:
    assert not decide({"roc_auc": float("nan"), "log_loss": 0.1}, None, GATE).promote
    assert not decide({"accuracy": 0.9}, None, GateConfig(metric="roc_auc")).promote


def test_unscoreable_champion_is_named() -> None:
    decision = decide({"roc_auc": 0.8, "log_loss": 0.4}, None, GATE, champion_version="3")
    assert decision.promote and "champion 3 could not score" in decision.reason


def test_classification_metrics_on_known_values() -> None:
    targets = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.45, 0.55], [0.2, 0.8]])  # one of four pairs misordered
    scores = metrics.classification(targets, probabilities)
    assert scores["accuracy"] == pytest.approx(0.75)
    assert scores["roc_auc"] == pytest.approx(0.75)
    multiclass = metrics.classification(np.array([0, 1, 2]), np.eye(3))
    assert multiclass["accuracy"] == 1.0 and multiclass["roc_auc"] == 1.0


def test_regression_metrics_and_direction() -> None:
    scores = metrics.regression(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert scores["mae"] == pytest.approx(2 / 3)
    assert scores["rmse"] == pytest.approx(np.sqrt(4 / 3))
    assert not metrics.greater_is_better("val_rmse") and metrics.greater_is_better("test_roc_auc")


def test_a_failing_champion_lets_a_better_candidate_below_the_floor_through_when_configured() -> None:
    failing = {"roc_auc": 0.55, "log_loss": 0.9}
    candidate = {"roc_auc": 0.68, "log_loss": 0.5}  # below the 0.7 floor, far better than the champion
    lenient = decide(candidate, failing, GATE)
    assert lenient.promote and "champion fails the thresholds" in lenient.reason and "promote_better" in lenient.reason
    strict = decide(candidate, failing, GATE.model_copy(update={"when_champion_fails": "require_thresholds"}))
    assert not strict.promote and "the champion fails them too" in strict.reason
    # a candidate that does not beat the failing champion by the margin is still refused
    assert not decide({"roc_auc": 0.555, "log_loss": 0.5}, failing, GATE).promote
    # a champion that passes the floors keeps every floor in force for the candidate
    healthy = decide(
        candidate,
        {"roc_auc": 0.65, "log_loss": 0.5, "accuracy": 0.9},
        GATE.model_copy(update={"thresholds": {"roc_auc": 0.6}}),
    )
    assert healthy.promote  # 0.68 passes 0.6 and beats 0.65
    assert not decide(candidate, {"roc_auc": 0.75, "log_loss": 0.5}, GATE).promote
