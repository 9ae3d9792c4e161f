"""Delta tables on disk, read and preprocessed by a real local Ray cluster."""

from __future__ import annotations

import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import ray
from deltalake import write_deltalake

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.core.errors import LakeloopError, ValidationFailed
from pipelines.scenarios import synthetic
from pipelines.training.data import prepare
from pipelines.training.features import FEATURES_COLUMN, TARGET_COLUMN
from pipelines.training.labelled_feedback import labelled_rows, refresh_training_table
from pipelines.training.validation import validate_table
from pipelines.training.workflow import train_and_register
from tests.helpers import ROOT, served_log, write_config

pytestmark = pytest.mark.integration


def lakeloop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_generate_then_validate_cli(raw_config: dict, tmp_path: Path) -> None:
    conf = write_config(raw_config, tmp_path / "lakeloop.yaml")
    for seed in ("1", "2"):
        done = lakeloop("data", "generate", "--rows", "400", "--seed", seed, "--config", str(conf), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert "as version 1" in done.stdout
    checked = lakeloop("data", "validate", "--config", str(conf), "--json", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert '"rows": 800' in checked.stdout


def test_validate_cli_names_a_missing_feature(raw_config: dict, tmp_path: Path) -> None:
    raw_config["dataset"]["features"].append({"name": "lifetime_value", "kind": "numeric"})
    conf = write_config(raw_config, tmp_path / "lakeloop.yaml")
    assert lakeloop("data", "generate", "--rows", "200", "--config", str(conf), cwd=tmp_path).returncode == 0
    done = lakeloop("data", "validate", "--config", str(conf), cwd=tmp_path)
    assert done.returncode == 1
    assert "column 'lifetime_value': missing from the table" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreadable_delta_features_are_named(config: LakeloopConfig) -> None:
    frame = synthetic.generate(100, 1).to_pandas()
    write_deltalake(delta.tables(config).events.uri, frame, configuration={"delta.enableDeletionVectors": "true"})
    with pytest.raises(ValidationFailed, match="deletion vectors"):
        validate_table(config)


def test_validation_runs_before_any_ray_work(config: LakeloopConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    delta.tables(config).events.append(synthetic.generate(200, 1).drop_columns(["plan"]))

    def no_ray_work(*args, **kwargs):
        raise AssertionError("Ray Data was asked to read a table that failed validation")

    monkeypatch.setattr(ray.data, "read_delta", no_ray_work)
    with pytest.raises(ValidationFailed, match="column 'plan': missing"):
        prepare(config)


def test_reads_the_pinned_version(config: LakeloopConfig, ray_local: None) -> None:
    delta.tables(config).events.append(synthetic.generate(500, 1))
    delta.tables(config).events.append(synthetic.generate(700, 2))
    old = prepare(config, version=0)
    assert old.lineage.tables[0].version == 0
    assert sum(old.lineage.rows.values()) == 500
    newest = prepare(config)
    assert newest.lineage.tables[0].version == 1
    assert sum(newest.lineage.rows.values()) == 1200


def test_a_table_is_read_into_few_blocks(config: LakeloopConfig, ray_local: None) -> None:
    """Left to itself, Ray Data splits this 300,000-row file into 29 blocks (a task each in every
    later map); lakeloop reads it into one block per CPU."""
    delta.tables(config).events.append(synthetic.generate(300_000, 1))
    read = delta.tables(config).events.ray_read().materialize()
    assert read.count() == 300_000
    assert read.num_blocks() == delta.read_blocks(300_000, int(ray.cluster_resources()["CPU"]))


def reference_features(train: pd.DataFrame, rows: pd.DataFrame, config: LakeloopConfig) -> np.ndarray:
    """Single-process pandas reference: mean-impute, standardize, mode-impute, one-hot (sorted)."""
    parts = []
    for name in config.dataset.numeric:
        mean = train[name].mean()
        filled_train = train[name].fillna(mean)
        parts.append(((rows[name].fillna(mean) - mean) / filled_train.std(ddof=0)).to_numpy()[:, None])
    for name in config.dataset.categorical:
        mode = train[name].mode().iloc[0]
        values = rows[name].fillna(mode)
        parts.append(np.stack([(values == c).to_numpy(float) for c in sorted(train[name].dropna().unique())], axis=1))
    return np.concatenate(parts, axis=1).astype(np.float32)


def sort_rows(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.lexsort(matrix.T[::-1])]


def test_ray_preprocessing_matches_single_process_reference(config: LakeloopConfig, ray_local: None) -> None:
    delta.tables(config).events.append(synthetic.generate(3000, 5))
    prepared = prepare(config)
    train_raw = prepared.raw["train"].to_pandas()
    for split in ("train", "test"):
        raw = prepared.raw[split].to_pandas()
        produced = prepared.splits[split].to_pandas()
        got = prepared.pipeline.onehot(np.stack(produced[FEATURES_COLUMN].to_numpy()))
        expected = reference_features(train_raw, raw, config)
        np.testing.assert_allclose(sort_rows(got), sort_rows(expected), rtol=1e-4, atol=1e-4)
        assert sorted(produced[TARGET_COLUMN]) == sorted(raw["churned"])
    # The in-process path used by serving gives the same numbers as Ray Data.
    test_raw = prepared.raw["test"].to_pandas()
    np.testing.assert_allclose(
        prepared.pipeline.onehot_frame(test_raw),
        reference_features(train_raw, test_raw, config),
        rtol=1e-4,
        atol=1e-4,
    )


def test_a_differently_named_table_trains_by_changing_only_conf(
    raw_config: dict, ray_local: None, mlflow_server: str
) -> None:
    renames = {
        "tenure_months": "months_active",
        "plan": "tier",
        "churned": "left",
        "event_time": "ts",
        "customer_id": "account",
    }
    table = synthetic.generate(2000, 9).rename_columns([renames.get(n, n) for n in synthetic.SCHEMA.names])
    table = table.set_column(
        table.schema.get_field_index("left"), "left", pa.array(np.where(table.column("left").to_numpy(), "yes", "no"))
    )
    dataset = raw_config["dataset"]
    dataset.update(
        label="left",
        classes=["no", "yes"],
        event_time="ts",
        split={"strategy": "hash", "key": "account", "validation_fraction": 0.2, "test_fraction": 0.2},
    )
    for feature in dataset["features"]:
        feature["name"] = renames.get(feature["name"], feature["name"])
    config = parse_config(raw_config)
    delta.tables(config).events.append(table)
    prepared = prepare(config)
    assert sum(prepared.lineage.rows.values()) == 2000
    assert prepared.lineage.rows["test"] == pytest.approx(400, abs=60)
    targets = prepared.splits["train"].to_pandas()[TARGET_COLUMN]
    assert set(targets) == {0, 1}
    raw_config["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"renamed-{uuid.uuid4().hex[:8]}")
    raw_config["train"].update(max_epochs=2)
    outcome = train_and_register(parse_config(raw_config))
    assert outcome.promoted and outcome.metrics["roc_auc"] > 0.7
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{raw_config['mlflow']['registered_model']}/{outcome.model_version}")
    scored = model.predict(table.to_pandas().head(5)[[f["name"] for f in dataset["features"]]])
    assert set(scored["prediction"]) <= {"no", "yes"}
    assert list(scored.columns)[1:] == ["probability_no", "probability_yes"]


def test_labelled_feedback_joins_served_rows_and_trains_with_the_events(
    config: LakeloopConfig, ray_local: None
) -> None:
    with pytest.raises(LakeloopError, match="no row of 'predictions' has a label in 'feedback'"):
        refresh_training_table(config)
    delta.tables(config).events.append(synthetic.generate(1000, 1))
    frame = synthetic.generate(300, 2).to_pandas()
    served, feedback = served_log(config, frame, datetime(2026, 6, 1, tzinfo=UTC))
    write_deltalake(config.storage.resolve("predictions"), served)
    write_deltalake(config.storage.resolve("feedback"), feedback.slice(0, 200))  # 200 of 300 rows labelled
    first_label = feedback.slice(0, 1).to_pylist()[0]
    flipped = str(1 - int(first_label["label"]))
    ignored = {**first_label, "label": flipped, "received_at": first_label["received_at"] + timedelta(hours=1)}
    relabel = {**ignored, "update": True, "received_at": first_label["received_at"] + timedelta(days=1)}
    append_label = lambda label: write_deltalake(
        config.storage.resolve("feedback"), pa.Table.from_pylist([label], schema=feedback.schema), mode="append"
    )
    append_label(ignored)  # a second label without update=true does not replace the first
    assert labelled_rows(config).set_index(["request_id", "row"]).loc[("q0", 0)]["churned"] == frame["churned"].iloc[0]
    append_label(relabel)
    rows = labelled_rows(config)
    assert len(rows) == 200  # the relabelled row counts once, with its updated label
    first = rows.set_index(["request_id", "row"]).loc[("q0", 0)]
    assert first["churned"] == 1 - frame["churned"].iloc[0]
    assert first["monthly_charges"] == pytest.approx(frame["monthly_charges"].iloc[0])
    uri = refresh_training_table(config)
    events_types = delta.arrow_dataset(delta.tables(config).events.open()).schema
    labelled_types = delta.arrow_dataset(delta.Table(uri).open()).schema
    assert labelled_types.field("tenure_months").type == events_types.field("tenure_months").type == pa.int64()
    reports = [validate_table(config), validate_table(config, uri)]
    prepared = prepare(config, reports=reports)
    assert sum(prepared.lineage.rows.values()) == 1200
    assert [t.uri for t in prepared.lineage.tables] == [delta.tables(config).events.uri, uri]
    # one time split over the union (a request's rows share a timestamp, so quantiles tie a little)
    assert prepared.lineage.rows["test"] == pytest.approx(180, abs=10)
