"""The drift monitor against a real champion (detectors stored in MLflow), real Delta tables and
a real Ray Jobs API."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from deltalake import write_deltalake

from pipelines import delta_tables, synthetic
from pipelines.config import LakeloopConfig, parse_config
from pipelines.drift import DriftSuite
from pipelines.monitor import load_champion, run_once
from pipelines.train import train_and_register
from tests.helpers import demo_raw_config, served_log

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jobs_api(ray_local: str) -> str:
    return ray_local  # the session cluster's Jobs API


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, jobs_api: str) -> dict:
    raw = demo_raw_config(tmp_path_factory.mktemp("monitor") / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"monitor-{uuid.uuid4().hex[:8]}")
    raw["train"].update(max_epochs=3)
    raw["monitor"].update(window_rows=500, jobs_api=jobs_api, retrain_entrypoint=f"{sys.executable} -c \"print('retrain')\"",
                          retries=4)
    config = parse_config(raw)
    delta_tables.append(config.table_uri, synthetic.generate(4000, 1))
    train_and_register(config)
    return raw


def with_traffic(raw: dict, root: Path, drift: str, seed: int, labels: str | None = None) -> LakeloopConfig:
    """A config whose predictions table holds 1,500 served rows (3 windows) of the given traffic;
    with `labels` ("true" or "flipped"), every row also gets that label through the feedback table."""
    config = parse_config({**raw, "storage": {**raw["storage"], "root": str(root)}})
    frame = synthetic.generate(1500, seed, drift).to_pandas()
    if labels == "flipped":
        frame[config.dataset.label] = 1 - frame[config.dataset.label]
    served, feedback = served_log(config, frame, datetime(2026, 6, 1, tzinfo=UTC))
    write_deltalake(config.storage.table_uri("predictions"), served)
    if labels:
        write_deltalake(config.storage.table_uri("feedback"), feedback)
    return config


def retraining_jobs(jobs_api: str, model: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [j for j in JobSubmissionClient(jobs_api).list_jobs() if (j.submission_id or "").startswith(
        f"lakeloop-retrain-{model}-")]


def test_drifted_traffic_submits_exactly_one_retraining_even_when_run_twice(trained: dict, tmp_path: Path, jobs_api: str) -> None:
    config = with_traffic(trained, tmp_path / "drifted", "covariate", seed=5)
    first = run_once(config)
    assert [w["drift"] for w in first["windows"]] == [True, True, True]
    assert first["triggered"] and first["submitted"]
    features = next(r for r in first["reports"] if r["detector"] == "features")
    assert features["p_value"] < 1e-6  # the shifted monthly_charges
    again = run_once(config)  # no new windows: same trigger, same id, nothing new
    assert again["windows"] == [] and again["submission_id"] == first["submission_id"] and not again["submitted"]
    # A second monitor with its own position sees the same windows and computes the same id.
    other = config.model_copy(update={"monitor": config.monitor.model_copy(update={"drift_reports_table": "reports2"})})
    assert run_once(other)["submission_id"] == first["submission_id"]
    assert len(retraining_jobs(jobs_api, config.mlflow.registered_model)) == 1


def test_undrifted_traffic_submits_nothing(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "calm", "none", seed=6)
    outcome = run_once(config)
    assert len(outcome["windows"]) == 3
    assert not outcome["triggered"] and outcome["submission_id"] is None


def test_detectors_saved_with_the_model_load_and_agree(trained: dict, tmp_path: Path) -> None:
    config = parse_config(trained)
    champion = load_champion(config)
    window = synthetic.generate(500, 8, "covariate").to_pandas()[config.dataset.feature_names]
    suite = champion.suite
    reloaded = DriftSuite.load(suite.save(tmp_path / "copy"), suite.model)
    for ours, theirs in zip(suite.check(window), reloaded.check(window)):
        assert ours.detector == theirs.detector and ours.is_drift == theirs.is_drift
        if ours.detector != "multivariate":  # the MMD p-value comes from random permutations
            assert ours.p_value == pytest.approx(theirs.p_value)
        else:
            assert ours.distance == pytest.approx(theirs.distance, rel=1e-5)
    assert np.isfinite([r.p_value for r in suite.check(window)]).all()


def test_labels_worse_than_the_test_score_are_performance_drift(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "relabelled", "none", seed=7, labels="flipped")
    outcome = run_once(config, submit=False)
    assert [w["drift"] for w in outcome["performance_windows"]] == [True] * 7  # 1,500 labels / 200
    report = next(r for r in outcome["reports"] if r["detector"] == "performance")
    assert report["distance"] > 0.5  # AUC fell from ~0.9 to ~0.1
    assert outcome["triggered"]
    assert run_once(config, submit=False)["performance_windows"] == []  # its own position: nothing re-checked


def test_true_labels_are_no_performance_drift(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "labelled", "none", seed=8, labels="true")
    outcome = run_once(config, submit=False)
    assert len(outcome["performance_windows"]) == 7
    assert not any(w["drift"] for w in outcome["performance_windows"])
    assert not outcome["triggered"]
