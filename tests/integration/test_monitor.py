"""The drift monitor against a real champion (detectors stored in MLflow), real Delta tables and
a real Ray Jobs API."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import write_deltalake

from pipelines.adapters import delta
from pipelines.adapters.jobs import Jobs
from pipelines.adapters.registry import Registry
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.model import run as models_step
from pipelines.monitoring.champion import load_champion
from pipelines.monitoring.check import describe, run_once
from pipelines.monitoring.loop_status import gather
from pipelines.scenarios import synthetic
from pipelines.training.detectors import DriftSuite
from pipelines.training.workflow import train_and_register
from tests.helpers import ROOT, demo_raw_config, served_log, write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def jobs_api(ray_local: str) -> str:
    return ray_local  # the session cluster's Jobs API


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, jobs_api: str) -> dict:
    raw = demo_raw_config(tmp_path_factory.mktemp("monitor") / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"monitor-{uuid.uuid4().hex[:8]}")
    raw["train"].update(max_epochs=3)
    raw["ray"].update(dashboard=jobs_api)
    raw["monitor"].update(window_rows=500, retrain_entrypoint=f"{sys.executable} -c \"print('retrain')\"", retries=4)
    config = parse_config(raw)
    delta.tables(config).events.append(synthetic.generate(4000, 1))
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
    write_deltalake(config.storage.resolve("predictions"), served)
    if labels:
        write_deltalake(config.storage.resolve("feedback"), feedback)
    return config


def retraining_jobs(jobs_api: str, model: str) -> list:
    from ray.job_submission import JobSubmissionClient

    return [
        j
        for j in JobSubmissionClient(jobs_api).list_jobs()
        if (j.submission_id or "").startswith(f"lakeloop-retrain-{model}-")
    ]


def test_drifted_traffic_submits_exactly_one_retraining_even_when_run_twice(
    trained: dict, tmp_path: Path, jobs_api: str
) -> None:
    config = with_traffic(trained, tmp_path / "drifted", "covariate", seed=5)
    first = run_once(config)
    assert [w.drift for w in first.windows] == [True, True, True]
    assert first.triggered and first.submitted
    assert first.retraining.attempts[0].number == 1
    assert Jobs(jobs_api).submit("true", first.submission_id, {}, {}) is False  # the same id again: not ours
    features = next(r for r in first.reports if r["detector"] == "features")
    assert features["p_value"] < 1e-6  # the shifted monthly_charges
    effects = json.loads(features["details"])["effect_sizes"]
    numeric = {name: sizes for name, sizes in effects.items() if "psi" in sizes}
    assert max(numeric, key=lambda name: numeric[name]["wasserstein_sd"]) == "monthly_charges"
    assert numeric["monthly_charges"]["psi"] > 0.25 and effects["plan"]["jensen_shannon"] > 0.1  # both shifted
    # A second monitor with its own window position sees the same windows; the attempts log is shared,
    # so it finds attempt 1 and submits nothing (had it missed the log, the Jobs API refuses the same id).
    other = config.model_copy(update={"monitor": config.monitor.model_copy(update={"drift_reports_table": "reports2"})})
    second = run_once(other)
    assert second.triggered and not second.submitted
    again = run_once(config)  # no new windows, no new training rows: nothing new
    assert again.windows == [] and not again.submitted
    assert len(retraining_jobs(jobs_api, config.mlflow.registered_model)) == 1


def test_undrifted_traffic_submits_nothing(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "calm", "none", seed=6)
    outcome = run_once(config)
    assert len(outcome.windows) == 3
    assert not outcome.triggered and outcome.submission_id is None
    for report in (r for r in outcome.reports if r["detector"] == "features"):
        sizes = [v for effect in json.loads(report["details"])["effect_sizes"].values() for v in effect.values()]
        assert max(sizes) < 0.25  # no shift is major on calm traffic


def test_a_champion_has_one_monitor_run_with_a_timeline_and_an_html_report(trained: dict, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.monitor import run as monitor_step

    config = with_traffic(trained, tmp_path / "timeline", "covariate", seed=11)
    first = run_once(config)
    config = with_traffic(trained, tmp_path / "timeline2", "none", seed=12)
    run_once(config)  # another pass on the same champion (its own tables: three more windows)
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(f"{config.mlflow.experiment}-monitor")
    version = first.model_version
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`lakeloop.model_name` = '{config.mlflow.registered_model}' "
        f"and tags.`lakeloop.model_version` = '{version}'",
    )
    assert len(runs) == 1  # every pass on this champion logged into one run
    history = client.get_metric_history(runs[0].info.run_id, "features_p_value")
    assert len(history) >= 6 and len({m.step for m in history}) >= 3  # a point per window (by its end), both passes
    assert client.get_metric_history(runs[0].info.run_id, "effect_monthly_charges_psi")
    written = monitor_step(argparse.Namespace(action="report", output=tmp_path / "report.html", open=False), config)
    page = (tmp_path / "report.html").read_text()
    assert runs[0].info.run_id in written.summary
    assert "<h1>Drift report: " in page and "data:image/png;base64," in page
    assert all(name in page for name in config.dataset.feature_names) and "jensen_shannon" in page
    assert "<h2>Live comparison (online gate)</h2>" in page and "no online candidate was set" in page


def test_detectors_saved_with_the_model_load_and_agree(trained: dict, tmp_path: Path) -> None:
    config = parse_config(trained)
    champion = load_champion(config)
    window = synthetic.generate(500, 8, "covariate").to_pandas()[config.dataset.feature_names]
    suite = champion.suite
    reloaded = DriftSuite.load(suite.save(tmp_path / "copy"), suite.model)
    for ours, theirs in zip(suite.check(window), reloaded.check(window), strict=True):
        assert ours.detector == theirs.detector and ours.is_drift == theirs.is_drift
        if ours.detector != "multivariate":  # the MMD p-value comes from random permutations
            assert ours.p_value == pytest.approx(theirs.p_value)
        else:
            assert ours.distance == pytest.approx(theirs.distance, rel=1e-5)
    assert np.isfinite([r.p_value for r in suite.check(window)]).all()


def test_labels_worse_than_the_test_score_are_performance_drift(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "relabelled", "none", seed=7, labels="flipped")
    outcome = run_once(config, submit=False)
    assert [w.drift for w in outcome.performance_windows] == [True] * 7  # 1,500 labels / 200
    report = next(r for r in outcome.reports if r["detector"] == "performance")
    assert report["distance"] > 0.5  # AUC fell from ~0.9 to ~0.1
    assert outcome.triggered
    assert run_once(config, submit=False).performance_windows == []  # its own position: nothing re-checked


def test_true_labels_are_no_performance_drift(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "labelled", "none", seed=8, labels="true")
    outcome = run_once(config, submit=False)
    assert len(outcome.performance_windows) == 7
    assert not any(w.drift for w in outcome.performance_windows)
    assert not outcome.triggered


def test_a_refused_retraining_is_retried_after_new_rows_then_the_loop_says_it_is_degraded(
    tmp_path: Path, mlflow_server: str, jobs_api: str
) -> None:
    """Real retraining jobs through the Jobs API, refused by a gate no model can pass."""
    raw = demo_raw_config(tmp_path / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"degrade-{uuid.uuid4().hex[:8]}")
    raw["train"].update(max_epochs=4)
    config = parse_config(raw)
    delta.tables(config).events.append(synthetic.generate(3000, 1))
    assert train_and_register(config).promoted
    # the retraining jobs: as small as a job can be, and refused by a gate no model can pass
    raw["train"].update(max_epochs=1)
    raw["tune"].update(num_samples=1)
    raw["gate"].update(thresholds={"roc_auc": 0.999}, when_champion_fails="require_thresholds")
    raw["ray"].update(dashboard=jobs_api)
    raw["monitor"].update(
        retrain_entrypoint=f"{sys.executable} -m pipelines.train --json",
        retry={"after_rows": 100, "max_attempts": 2, "tune_from_attempt": 2},
    )
    config = with_traffic(raw, tmp_path / "data", "covariate", seed=5)
    jobs = Jobs(jobs_api)

    first = run_once(config)
    assert first.submitted and first.retraining.attempts[0].tune is False
    assert jobs.wait(first.submission_id, timeout_s=600).status == "SUCCEEDED", jobs.logs(first.submission_id)[-4000:]
    # before the monitor's next pass records it, `lakeloop status` already tells the outcome
    shown = gather(config, ROOT / "conf" / "serve.yaml")["retraining"]
    assert [(a["submission_id"], a["outcome"]) for a in shown["attempts"]] == [(first.submission_id, "refused")]
    assert "below the floor" in shown["attempts"][0]["reason"] and "retrying once" in shown["next"]["reason"]
    refused = run_once(config)
    assert refused.retraining.attempts[0].outcome == "refused"
    assert "below the floor" in refused.retraining.attempts[0].reason
    assert refused.retraining.action == "wait" and not refused.submitted  # no new rows yet: not live, waiting

    delta.tables(config).events.append(synthetic.generate(150, 2))  # new training rows arrive
    retry = run_once(config)
    assert retry.submitted and retry.submission_id != first.submission_id
    second = retry.retraining.attempts[1]
    assert second.number == 2 and second.tune is True  # the retry escalates to a search
    assert "--tune" in jobs.state(retry.submission_id).entrypoint
    assert jobs.wait(retry.submission_id, timeout_s=600).status == "SUCCEEDED", jobs.logs(retry.submission_id)[-4000:]

    degraded = run_once(config)
    assert degraded.retraining.state == "degraded"
    assert "2 retraining attempts" in degraded.retraining.reason
    assert "DEGRADED" in describe(degraded)
    champion = next(v for v in Registry.from_config(config).versions() if "champion" in v["aliases"])
    assert champion["health"] == "degraded" and "did not replace it" in champion["health_reason"]
    listing = models_step(argparse.Namespace(action="list"), config).summary
    assert "DEGRADED" in listing
    assert not run_once(config).submitted  # degraded: no further attempts for this champion


def test_rows_that_land_late_are_checked_and_none_twice(trained: dict, tmp_path: Path) -> None:
    """The position is the Delta commit, not the clock: rows served earlier but landing later (another
    replica's flush, a retried append) are still checked (the old served_at position skipped them)."""
    config = parse_config({**trained, "storage": {**trained["storage"], "root": str(tmp_path / "late")}})
    frame = synthetic.generate(1000, 9).to_pandas()
    later, earlier = (
        served_log(config, frame.iloc[:500], datetime(2026, 6, 2, tzinfo=UTC)),
        served_log(config, frame.iloc[500:], datetime(2026, 6, 1, tzinfo=UTC)),
    )
    predictions = config.storage.resolve("predictions")
    delta.Table(predictions).append(later[0])
    first = run_once(config, submit=False)
    assert [w.rows for w in first.windows] == [500]
    delta.Table(predictions).append(earlier[0])  # served a day before the rows already checked
    second = run_once(config, submit=False)
    assert [w.rows for w in second.windows] == [500] and second.pending_rows == 0
    assert run_once(config, submit=False).windows == []


def test_a_label_that_arrives_before_its_row_waits_for_it(trained: dict, tmp_path: Path) -> None:
    config = parse_config({**trained, "storage": {**trained["storage"], "root": str(tmp_path / "early")}})
    served, feedback = served_log(config, synthetic.generate(200, 10).to_pandas(), datetime(2026, 6, 1, tzinfo=UTC))
    labels = feedback.set_column(
        feedback.schema.get_field_index("received_at"),
        "received_at",
        pa.array([datetime.now(UTC)] * feedback.num_rows, pa.timestamp("us", tz="UTC")),
    )
    delta.Table(config.storage.resolve("feedback")).append(labels)  # the labels land first
    waiting = run_once(config, submit=False)
    assert waiting.performance_windows == [] and waiting.orphaned_labels == 0
    delta.Table(config.storage.resolve("predictions")).append(served)  # the rows they label land later
    joined = run_once(config, submit=False)
    assert [w.rows for w in joined.performance_windows] == [200]


def test_two_monitors_at_once_record_each_window_once(trained: dict, tmp_path: Path) -> None:
    config = with_traffic(trained, tmp_path / "twice", "none", seed=11)
    conf = write_config(config.model_dump(mode="json"), tmp_path / "lakeloop.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pipelines.monitor", "--once", "--no-submit", "--json", "--config", str(conf)]
    monitors = [
        subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outcomes = [json.loads(m.communicate(timeout=300)[0]) for m in monitors]
    assert sorted(len(o["windows"]) for o in outcomes) == [0, 3]  # one checked the three windows, not both
    checked = delta.Table(config.storage.resolve("drift_reports")).read(
        columns=["source_to", "source_offset", "detector"]
    )
    frame = checked.to_pandas()
    assert not frame.duplicated().any() and frame["source_to"].notna().sum() == len(frame)


def test_the_looping_monitor_exports_what_it_checked_to_prometheus(trained: dict, tmp_path: Path) -> None:
    from pipelines.adapters.local_services import free_port, stop_pid

    config = with_traffic(trained, tmp_path / "exported", "covariate", seed=13)
    port = free_port()
    raw = config.model_dump(mode="json")
    raw["monitor"].update(metrics_port=port, interval_s=1)
    conf = write_config(raw, tmp_path / "lakeloop.yaml")
    command = [sys.executable, "-m", "pipelines.monitor", "--no-submit", "--config", str(conf)]
    loop = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:

        def exported() -> str:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return ""

        wanted = 'lakeloop_monitor_windows_total{kind="traffic",verdict="drift"} 3.0'
        deadline = time.monotonic() + 240
        while wanted not in exported() and time.monotonic() < deadline and loop.poll() is None:
            time.sleep(0.5)
        text = exported()
    finally:
        stop_pid(loop.pid)
    assert wanted in text, text[-2000:]
    assert 'lakeloop_monitor_last_pass_timestamp_seconds{outcome="ok"}' in text
    assert "lakeloop_monitor_champion_version 1.0" in text and "lakeloop_monitor_degraded 0.0" in text


def test_after_a_drift_the_loop_keeps_learning_when_the_regimes_rows_double_and_stops_at_a_plateau(
    tmp_path: Path, mlflow_server: str, jobs_api: str
) -> None:
    """A champion trained on the 400 rows since a concept change: at 800 rows of that regime the monitor
    submits a learning retraining (a real job), whose candidate cannot beat it by the gate's margin; from
    then on it waits at a plateau, whatever more rows arrive."""
    from pipelines.scenarios.demo_data import land_demo_rows

    raw = demo_raw_config(tmp_path / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"learn-{uuid.uuid4().hex[:8]}")
    raw["ray"].update(dashboard=jobs_api)
    raw["train"].update(source="events", max_epochs=2)
    raw["gate"].update(min_improvement=0.5, thresholds={})  # no candidate beats the champion by that much: a plateau
    raw["monitor"].update(
        retrain_entrypoint=f"{sys.executable} -m pipelines.train --json", learning={"growth": 2.0, "min_rows": 200}
    )
    config = parse_config(raw)
    land_demo_rows(config, 2000, 1)  # the old concept
    old_end = pc.max(delta.tables(config).events.read(["event_time"]).column(0)).as_py()
    land_demo_rows(config, 400, 2, "concept")  # its rows start a second after the old ones
    first = train_and_register(config, regime_start=old_end + timedelta(seconds=1), trigger="drift")
    assert first.promoted and first.lineage["policy"]["regime_rows"] == 400

    waiting = run_once(config)  # no served traffic: no drift; the regime has 400 of the 800 rows it waits for
    assert not waiting.submitted and "next retraining at 800 labelled rows" in waiting.retraining.reason
    land_demo_rows(config, 400, 3, "concept")
    due = run_once(config)
    assert due.submitted and due.retraining.attempts[0].trigger == "learn"
    assert "--trigger learn" in Jobs(jobs_api).state(due.submission_id).entrypoint
    assert Jobs(jobs_api).wait(due.submission_id, timeout_s=600).status == "SUCCEEDED"
    plateau = run_once(config)
    assert plateau.retraining.attempts[0].outcome == "refused" and "plateau" in plateau.retraining.reason
    land_demo_rows(config, 1200, 4, "concept")
    assert not run_once(config).submitted  # stopped learning for this champion
    version = Registry.from_config(config).client.get_model_version(config.mlflow.registered_model, "2")
    assert version.tags["lakeloop.trigger"] == "learn" and version.tags["lakeloop.family"] == "xgboost"
