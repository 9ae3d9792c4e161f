"""Feature tables on a real Ray cluster, Delta tables and MLflow server: `lakeloop features build`
joins label events to a profile view and a usage view with late corrections, point-in-time; a
training run on the result logs every source it was built from; and the Serve app, after `features
materialize`, answers requests that send only the entity key, logging the values it looked up."""

from __future__ import annotations

import argparse
import json
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from pipelines import features as features_step
from pipelines.adapters import delta
from pipelines.adapters.local_services import free_port
from pipelines.adapters.ray_serve import DEFAULT_SERVE_CONFIG
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.core.errors import ConfigError
from pipelines.feature_tables.build import build_training_set, last_build
from pipelines.monitoring.loop_status import describe, gather
from pipelines.scenarios import endpoint as shipped_endpoint
from pipelines.scenarios.feature_tables import TABLES, USAGE_COLUMNS, FeatureTables, feature_tables, features_section
from pipelines.training.workflow import train_and_register
from tests.helpers import customers_of, demo_raw_config, newest_event, offline_values, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def landed(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: str
) -> tuple[LakeloopConfig, FeatureTables]:
    """The three tables of the worked example (2,000 events of 500 customers), as landed, and the wide
    rows they were cut from."""
    raw = demo_raw_config(tmp_path_factory.mktemp("features") / "data")
    raw["dataset"]["table"] = "training_set"
    raw["features"] = features_section()
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model="features-churn")
    raw["train"].update(max_epochs=1)
    config = parse_config(raw)
    generated = feature_tables(2000, 5, customers=500)
    for part, name in TABLES.items():
        delta.tables(config).named(name).append(getattr(generated, part))
    return config, generated


def _sorted(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].sort_values(["customer_id", "event_time"]).reset_index(drop=True)


def test_the_built_training_set_is_the_wide_table_and_no_late_correction_leaks(landed) -> None:
    config, generated = landed
    wide = generated.wide.to_pandas()
    outcome = features_step.run(argparse.Namespace(action="build"), config)
    built = delta.tables(config).named("training_set")
    rows = built.read().to_pandas()
    columns = list(wide.columns)
    pd.testing.assert_frame_equal(_sorted(rows, columns), _sorted(wide, columns), check_dtype=False)
    # every event with a late correction kept the value known at its time (the equality above); the
    # corrections exist, and they are later rows of the same customer and day
    usage = delta.tables(config).named(TABLES["usage"]).read().to_pandas()
    fixes = usage[usage.duplicated(["customer_id", "day"], keep="first")]
    assert len(fixes) > 100 and (fixes["computed_at"] > fixes["day"] + pd.Timedelta(days=1)).all()
    sources = outcome.data["sources"]
    uris = {delta.tables(config).named(name).uri for name in TABLES.values()}
    assert set(sources) == uris and outcome.data["version"] == built.version() and outcome.data["rows"] == 2000
    assert f"version {built.version()}" in outcome.summary
    shown = describe(gather(config, DEFAULT_SERVE_CONFIG))  # `lakeloop status`: the views and the last build
    usage = delta.tables(config).named(TABLES["usage"])
    assert f"feature view usage: {usage.uri} version {usage.version()}" in shown
    assert f"last build: {built.uri} version {built.version()} (2000 rows)" in shown


@pytest.fixture(scope="module")
def trained(landed):
    """A build (a new version of the training set) and the champion trained on it."""
    config, _ = landed
    return build_training_set(config), train_and_register(config)


def test_a_run_on_the_training_set_logs_every_source_it_was_built_from(landed, trained) -> None:
    config, _ = landed
    built, trained = trained
    run = MlflowClient(config.mlflow.tracking_uri).get_run(trained.run_id)
    assert json.loads(run.data.tags["lakeloop.feature_sources"]) == built.sources
    assert f"training_set version {built.version}" in run.data.tags["lakeloop.tables"].replace(
        delta.tables(config).named("training_set").uri, "training_set"
    )


def test_a_missing_column_or_a_key_of_another_type_is_refused_by_name_before_a_build(landed, tmp_path: Path) -> None:
    config, _ = landed
    training_set = delta.tables(config).named("training_set")
    before = training_set.version()
    raw = json.loads(config.model_dump_json())
    raw["features"]["views"][1]["columns"] = [*USAGE_COLUMNS, "data_gb"]
    with pytest.raises(ConfigError, match=r"features.views 'usage' \(.*daily_usage\) has no column data_gb"):
        build_training_set(parse_config(raw))
    raw = json.loads(config.model_dump_json())
    raw["features"]["views"][1]["columns"] = ["tenure_months", "monthly_charges"]
    with pytest.raises(ConfigError, match="dataset column support_calls: neither features.labels.table nor any"):
        build_training_set(parse_config(raw))
    numbers = tmp_path / "numbered_profile"
    profile = delta.tables(config).named(TABLES["profile"]).read().to_pandas()
    profile["customer_id"] = range(len(profile))
    delta.Table(str(numbers)).append(pa.Table.from_pandas(profile, preserve_index=False))
    raw = json.loads(config.model_dump_json())
    raw["features"]["views"][0]["table"] = str(numbers)
    with pytest.raises(ConfigError, match="key 'customer_id' is int64 in the view but string in features.labels"):
        build_training_set(parse_config(raw))
    assert training_set.version() == before  # nothing written by a refused build


def test_the_endpoint_looks_up_the_views_by_key_and_logs_what_the_model_saw(landed, trained, ray_local: str) -> None:
    config, generated = landed
    raw = json.loads(config.model_dump_json())
    raw["serving"].update(poll_interval_s=0.5)
    raw["serving"]["prediction_log"].update(flush_rows=10, flush_interval_s=0.5)
    raw["features"]["online"]["refresh_interval_s"] = 0.5
    config = parse_config(raw)
    at = newest_event(generated) + timedelta(days=1)  # within the usage view's TTL; some corrections visible
    args = argparse.Namespace(action="materialize", as_of=at)
    materialized = features_step.run(args, config).data["views"]
    shown = describe(gather(config, DEFAULT_SERVE_CONFIG))
    online_usage = materialized[1]
    assert f"online: {online_usage['store']} version {online_usage['version']} (500 entities" in shown
    customers = customers_of(generated)[:20]
    with shipped_endpoint.serving(config, ray_local, free_port()) as url:
        answer = httpx.post(f"{url}/predict", json={"records": [{"customer_id": c} for c in [*customers, "nobody"]]})
        assert answer.status_code == 200, answer.text
        refused = httpx.post(f"{url}/predict", json={"records": [{"customer_id": 7}]})
        assert refused.status_code == 422 and "keys are text; got 7" in refused.json()["error"]
        lookups = httpx.get(f"{url}/model").json()["features"]["usage"]["lookups"]
        assert lookups == {"hit": 20, "miss": 1}
        wanted = ("ray_lakeloop_feature_lookups_total", "ray_lakeloop_feature_age_seconds_bucket")
        assert wait_for(lambda: all(_metric(name) for name in wanted), timeout=90)
        assert any('result="miss"' in line and 'view="usage"' in line for line in _metric(wanted[0]))
    request_id = answer.json()["request_id"]
    log = delta.tables(config).predictions
    assert wait_for(lambda: log.exists() and request_id in log.read()["request_id"].to_pylist(), 60)
    logged = log.read().to_pandas().query("request_id == @request_id").sort_values("row")
    assert logged["customer_id"].tolist() == [*customers, "nobody"]
    expected = offline_values(config, generated, at, customers)  # the training set's rule at `at`
    for column in config.dataset.feature_names:
        if column in config.dataset.numeric:
            np.testing.assert_allclose(logged[column].iloc[:20], expected[column], err_msg=column)
        else:
            assert logged[column].tolist()[:20] == expected[column].tolist(), column
    assert logged.iloc[20][config.dataset.feature_names].isna().all()  # a missing entity: imputed


def _metric(name: str) -> list[str]:
    import ray

    text = "\n".join(
        httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
        for node in ray.nodes()
        if node["Alive"]
    )
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_batch_scoring_joins_each_row_to_the_views_as_of_its_own_event_time(landed, trained) -> None:
    """Label events scored by the batch API, in the driver and on the cluster, give the predictions of
    the wide rows they were cut from: each row saw the values known at its event time."""
    from pipelines.inference.scoring import predict, release_pools

    config, generated = landed
    key = ["customer_id", "event_time"]
    expected = predict(generated.wide.to_pandas(), config=config).to_pandas().set_index(key).sort_index()
    events = delta.tables(config).named(TABLES["labels"]).uri
    in_driver = predict(events, config=config).to_pandas().set_index(key).sort_index()
    on_cluster_config = parse_config({**json.loads(config.model_dump_json()), "batch_inference": {"inline_rows": 0}})
    try:
        on_cluster = predict(events, config=on_cluster_config).to_pandas().set_index(key).sort_index()
    finally:
        release_pools()  # the warm pool's actors hold a CPU of the shared cluster until released
    for scored in (in_driver, on_cluster):
        assert len(scored) == 2000
        np.testing.assert_allclose(scored["probability_1"], expected["probability_1"], rtol=1e-6)
    without_time = generated.labels.drop_columns(["event_time"]).to_pandas()
    with pytest.raises(ConfigError, match="the input has no column event_time"):
        predict(without_time, config=config)


def test_training_builds_first_when_label_events_or_feature_values_arrived(landed, trained) -> None:
    """New label events and feature rows land: the next training run (as the monitor's retraining
    job runs it) builds a new training set from them first and logs those sources; a run with
    nothing new does not build."""
    config, _ = landed
    more = feature_tables(400, 6, customers=100)
    tables = delta.tables(config)
    for part, name in TABLES.items():
        tables.named(name).append(getattr(more, part))
    outcome = train_and_register(config)
    built = last_build(config)
    assert outcome.notes[0].startswith(f"built {built['training_set']} version {built['version']} (2400 rows)")
    assert built["sources"] == {tables.named(n).uri: tables.named(n).version() for n in TABLES.values()}
    assert outcome.lineage["feature_sources"] == built["sources"]
    again = train_and_register(config)
    assert not any(note.startswith("built ") for note in again.notes) and last_build(config) == built


@pytest.mark.parametrize("buckets", [1, 7])
def test_the_join_on_ray_equals_the_join_in_one_process_across_blocks_and_buckets(ray_local: str, buckets: int) -> None:
    """Several blocks a side, an integer key meeting the same values stored as floats, late corrections,
    a TTL and null keys: the distributed join gives every event the value the one-process join does."""
    import ray.data

    from pipelines.core.point_in_time import ViewJoin, as_of_join
    from pipelines.feature_tables.join import join_view

    rng = np.random.default_rng(buckets)
    day = pd.Timestamp("2026-01-01", tz="UTC")
    computed = day + pd.to_timedelta(rng.integers(0, 40, 2000), unit="D")
    features = pd.DataFrame(
        {
            "customer": rng.integers(0, 300, 2000).astype(float),
            "computed_at": computed,
            "written_at": computed + pd.to_timedelta(rng.choice([0, 0, 0, 2, 5], 2000), unit="D"),
            "spend": rng.normal(100, 30, 2000),
        }
    )
    features.loc[::97, "customer"] = np.nan
    events = pd.DataFrame(
        {
            "row": np.arange(3000),
            "customer": rng.integers(0, 330, 3000),
            "at": day + pd.to_timedelta(rng.uniform(0, 45, 3000), unit="D"),
        }
    )
    view = ViewJoin(("customer",), "computed_at", ("spend",), "written_at", timedelta(days=10))
    blocks = [pa.Table.from_pandas(part, preserve_index=False) for part in np.array_split(events, 3)]
    feature_blocks = [pa.Table.from_pandas(part, preserve_index=False) for part in np.array_split(features, 4)]
    joined = join_view(ray.data.from_arrow(blocks), ray.data.from_arrow(feature_blocks), "at", view, buckets)
    got = joined.to_pandas().sort_values("row")["spend"].to_numpy()
    expected = as_of_join(events, features, "at", view)["spend"].to_numpy()
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(expected).any() and (~np.isnan(expected)).sum() > 1000  # both cases occur
