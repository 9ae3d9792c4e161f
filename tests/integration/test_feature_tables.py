"""Feature tables on a real Ray cluster, Delta tables and MLflow server: `lakeloop features build`
joins label events to a profile view and a usage view with late corrections, point-in-time, and a
training run on the result logs every source it was built from."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from mlflow import MlflowClient

from pipelines import features as features_step
from pipelines.adapters import delta
from pipelines.adapters.ray_serve import DEFAULT_SERVE_CONFIG
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.core.errors import ConfigError
from pipelines.feature_tables.build import build_training_set
from pipelines.monitoring.loop_status import describe, gather
from pipelines.scenarios.feature_tables import TABLES, USAGE_COLUMNS, feature_tables
from pipelines.training.workflow import train_and_register
from tests.helpers import demo_raw_config, features_section

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def landed(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: str
) -> tuple[LakeloopConfig, pd.DataFrame]:
    """The three tables of the worked example (2,000 events of 500 customers) and the wide rows they
    were cut from."""
    raw = demo_raw_config(tmp_path_factory.mktemp("features") / "data")
    raw["dataset"]["table"] = "training_set"
    raw["features"] = features_section()
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model="features-churn")
    raw["train"].update(max_epochs=1)
    config = parse_config(raw)
    generated = feature_tables(2000, 5, customers=500)
    for part, name in TABLES.items():
        delta.tables(config).named(name).append(getattr(generated, part))
    return config, generated.wide.to_pandas()


def _sorted(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return frame[columns].sort_values(["customer_id", "event_time"]).reset_index(drop=True)


def test_the_built_training_set_is_the_wide_table_and_no_late_correction_leaks(landed) -> None:
    config, wide = landed
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


def test_a_run_on_the_training_set_logs_every_source_it_was_built_from(landed) -> None:
    config, _ = landed
    built = build_training_set(config)  # a second build: a new version of the training set
    trained = train_and_register(config)
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
