from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.core.config import load_config, parse_config
from pipelines.core.errors import ConfigError
from tests.helpers import DEMO_CONFIG, write_config


def test_shipped_config_loads() -> None:
    config = load_config(DEMO_CONFIG)
    assert config.dataset.label == "churned"
    assert "plan" in config.dataset.categorical
    assert config.dataset.split.train_fraction == pytest.approx(0.7)


def test_unknown_key_names_file_and_key(raw_config: dict, tmp_path: Path) -> None:
    raw_config["dataset"]["lable"] = "x"
    path = write_config(raw_config, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert "dataset.lable: unknown key" in str(err.value)


def test_bad_feature_kind_names_the_position(raw_config: dict) -> None:
    raw_config["dataset"]["features"][2]["kind"] = "text"
    with pytest.raises(ConfigError, match=r"dataset\.features\.2\.kind"):
        parse_config(raw_config, "f.yaml")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["split"].update(strategy="hash"), "split.key is required"),
        (lambda d: d.pop("classes"), "classes must list at least two"),
        (lambda d: d.update(task="regression"), "classes is only valid"),
        (lambda d: d["features"].append({"name": "plan", "kind": "numeric"}), "repeated: plan"),
        (lambda d: d["features"].append({"name": "churned", "kind": "numeric"}), "both a feature and the label"),
        (lambda d: d["split"].update(validation_fraction=0.5, test_fraction=0.45), "at least 10%"),
    ],
)
def test_dataset_rules(raw_config: dict, mutate, message: str) -> None:
    mutate(raw_config["dataset"])
    with pytest.raises(ConfigError, match=message):
        parse_config(raw_config, "f.yaml")


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("dataset: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_ecosystem_variables_win(raw_config: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("LAKELOOP_STORAGE_ROOT", str(tmp_path / "elsewhere"))
    config = parse_config(raw_config)
    assert config.ray.address == "ray://head:10001"
    assert config.mlflow.tracking_uri == "http://mlflow:5000"
    assert config.storage.resolve(config.dataset.table) == str(tmp_path / "elsewhere" / "events")


def test_table_names_resolve_under_object_store_roots(raw_config: dict) -> None:
    raw_config["storage"]["root"] = "s3://bucket/lake"
    assert parse_config(raw_config).storage.resolve("events") == "s3://bucket/lake/events"
    assert parse_config(raw_config).storage.resolve("gs://other/events") == "gs://other/events"


def test_search_space_domain_shape(raw_config: dict) -> None:
    raw_config["train"]["families"]["mlp"]["search_space"]["lr"] = {"kind": "loguniform", "values": [0.1]}
    with pytest.raises(ConfigError, match=r"train\.families\.mlp\.search_space\.lr"):
        parse_config(raw_config)
    raw_config["train"]["families"]["mlp"]["search_space"] = {"momentum": {"kind": "choice", "values": [1]}}
    with pytest.raises(ConfigError, match="momentum: not a setting of kind 'mlp'"):
        parse_config(raw_config)


def test_families_are_named_checked_and_the_built_ins_always_there(raw_config: dict) -> None:
    raw_config["train"]["families"] = {"mine": {"kind": "sklearn", "class_path": "sklearn.linear_model:Ridge"}}
    config = parse_config(raw_config)
    assert set(config.train.families) == {"mlp", "xgboost", "mine"} and config.train.spec.kind == "xgboost"
    raw_config["train"]["family"] = "nope"
    with pytest.raises(ConfigError, match="family: 'nope' is not one of the families: mine, mlp, xgboost"):
        parse_config(raw_config)
    raw_config["train"].update(family="mine", families={"mine": {"kind": "torch"}})
    with pytest.raises(ConfigError, match="class_path is required for kind 'torch'"):
        parse_config(raw_config)
    raw_config["train"].update(family="xgboost", families={"xgboost": {"params": {"eta": 2}}})
    with pytest.raises(ConfigError, match=r"train\.families\.xgboost"):
        parse_config(raw_config)
    raw_config["train"]["families"] = {}
    raw_config["tune"]["families"] = ["xgboost", "gbm"]
    with pytest.raises(ConfigError, match="tune.families: gbm not in train.families"):
        parse_config(raw_config)


def test_a_job_gets_its_configuration_as_yaml_text(raw_config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    raw_config["train"]["source"] = "both"
    raw_config["storage"]["root"] = "s3://bucket/lakeloop"
    monkeypatch.setenv("LAKELOOP_CONFIG_YAML", yaml.safe_dump(raw_config))
    config = load_config()
    assert (
        config.train.source == "both" and config.storage.resolve(config.dataset.table) == "s3://bucket/lakeloop/events"
    )
    monkeypatch.setenv("LAKELOOP_CONFIG_YAML", "train: {sorce: events}")
    with pytest.raises(ConfigError, match=r"\$LAKELOOP_CONFIG_YAML"):
        load_config()


def test_credentials_in_the_config_are_refused_without_echoing_them(raw_config: dict) -> None:
    raw_config["storage"]["storage_options"] = {"aws_region": "us-west-2", "aws_secret_access_key": "hunter2"}
    with pytest.raises(ConfigError, match="aws_secret_access_key: credentials do not belong") as refused:
        parse_config(raw_config)
    assert "hunter2" not in str(refused.value)
    raw_config["storage"]["storage_options"] = {"aws_region": "us-west-2"}
    raw_config["mlflow"]["tracking_uri"] = "https://alice:hunter2@mlflow.example.com"
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME") as refused:
        parse_config(raw_config)
    assert "hunter2" not in str(refused.value)


def test_the_gate_metric_and_thresholds_must_fit_the_task(raw_config: dict) -> None:
    raw_config["dataset"].update(task="regression", label="monthly_charges")
    raw_config["dataset"].pop("classes")
    raw_config["dataset"]["features"] = [f for f in raw_config["dataset"]["features"] if f["name"] != "monthly_charges"]
    with pytest.raises(
        ConfigError,
        match=r"test: gate.metric: 'roc_auc' is not a regression metric; choose one of "
        r"rmse, mae, r2",
    ):
        parse_config(raw_config, "test")
    raw_config["gate"].update(metric="rmse", thresholds={"roc_auc": 0.7})
    with pytest.raises(ConfigError, match="gate.thresholds: roc_auc not regression metrics"):
        parse_config(raw_config, "test")
    raw_config["gate"].update(thresholds={"r2": 0.5})
    assert parse_config(raw_config, "test").gate.metric == "rmse"


@pytest.mark.parametrize(
    "key",
    [
        "azure_storage_master_key",
        "master_key",
        "AZURE_STORAGE_SAS_TOKEN",
        "google_service_account_key",
        "Aws_Session_Token",
    ],
)
def test_credential_keys_of_every_cloud_and_case_are_refused(raw_config: dict, key: str) -> None:
    raw_config["storage"]["storage_options"] = {key: "hunter2"}
    with pytest.raises(ConfigError, match=f"{key}: credentials do not belong") as refused:
        parse_config(raw_config)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize("uri", ["HTTPS://alice:hunter2@mlflow.example.com", "Http://bob@10.0.0.1:5000"])
def test_credentials_in_a_tracking_uri_are_refused_whatever_the_case(raw_config: dict, uri: str) -> None:
    raw_config["mlflow"]["tracking_uri"] = uri
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_USERNAME") as refused:
        parse_config(raw_config)
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    "labels",
    [
        pd.Series([0, 1, 1, 2, 0], dtype="int64"),  # 2 is not a class
        pd.Series([1.0, float("nan"), 0.0]),  # "1.0" is not "1": as typed
        pd.Series(["1", "0", "yes"]),
        pd.Series([True, 1, "1", None], dtype=object),  # True is not 1 here
        pd.Series([1, None, 0], dtype="Int64"),
    ],
)
def test_labels_encode_as_their_text_would(labels: pd.Series) -> None:
    dataset = load_config(DEMO_CONFIG).dataset
    expected = [dataset.class_index.get(str(value), -1) for value in labels.astype(str)]
    assert dataset.encode_labels(labels).tolist() == expected


@pytest.mark.parametrize(("free_cpus", "expected"), [(4.0, 3), (2.0, 2), (1.5, 1), (1.0, 1), (0.0, 1)])
def test_the_batch_pool_starts_with_the_actors_free_cpus_hold_beside_a_read_task(
    free_cpus: float, expected: int
) -> None:
    pool = load_config(DEMO_CONFIG).batch_inference.model_copy(update={"min_actors": 1, "max_actors": 3})
    assert pool.starting_actors(free_cpus) == expected  # 0.5 CPU each, one CPU kept for a read task


VIEW = {"name": "usage", "table": "daily_usage", "keys": ["customer_id"], "event_time": "day", "columns": ["calls"]}


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"views": [VIEW]}, "features.labels: the label event table is needed"),
        (
            {"labels": {"table": "l", "event_time": "t"}, "views": [VIEW, {**VIEW, "columns": ["x"]}]},
            "the name usage is used twice",
        ),
        (
            {"labels": {"table": "l", "event_time": "t"}, "views": [VIEW, {**VIEW, "name": "other"}]},
            "the column calls comes from two views",
        ),
        ({"labels": {"table": "l", "event_time": "t"}, "views": [{**VIEW, "keys": []}]}, r"features\.views\.0\.keys"),
        ({"labels": {"table": "l", "event_time": "t"}, "views": [{**VIEW, "ttl_s": 0}]}, r"features\.views\.0\.ttl_s"),
    ],
)
def test_feature_views_that_cannot_be_joined_are_refused_by_name(
    raw_config: dict, features: dict, message: str
) -> None:
    raw_config["features"] = features
    with pytest.raises(ConfigError, match=message):
        parse_config(raw_config)


def test_without_feature_views_the_dataset_table_is_one_wide_table(raw_config: dict) -> None:
    config = parse_config(raw_config)
    assert config.features.views == [] and config.features.labels is None
