"""`lakeloop data maintain` on real Delta tables, with the lineage pins read from a real MLflow server."""

from __future__ import annotations

import argparse
import uuid

import mlflow
import pyarrow as pa
import pytest
from mlflow import MlflowClient
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.core.errors import TableError
from pipelines.maintain import run as maintain_step
from pipelines.scenarios import synthetic

pytestmark = pytest.mark.integration


def register_model_trained_on(config: LakeloopConfig, uri: str, version: int) -> None:
    """A registered model version whose training run's lineage pins `uri` at `version` (what
    training logs: an MLflow dataset input with a Delta source)."""
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_experiment("upkeep")
    with mlflow.start_run() as run:
        source = DeltaDatasetSource(path=uri, delta_table_version=version)
        mlflow.log_input(MetaDataset(source=source, name=f"events@v{version}"), context="training")
    client = MlflowClient(config.mlflow.tracking_uri)
    client.create_registered_model(config.mlflow.registered_model)
    client.create_model_version(config.mlflow.registered_model, f"runs:/{run.info.run_id}/model", run.info.run_id)


def maintain(config: LakeloopConfig, *tables: str, unpin: bool = False) -> dict:
    args = argparse.Namespace(table=list(tables) or None, retention_hours=0, unpin=unpin)
    return {o["table"]: o for o in maintain_step(args, config).data["tables"]}


def readable(uri: str, version: int) -> bool:
    try:
        delta.Table(uri).open(version=version).to_pyarrow_table()
    except (TableError, OSError):
        return False
    return True


def test_maintain_compacts_and_keeps_pinned_versions_and_unread_commits(raw_config: dict, mlflow_server: str) -> None:
    raw_config["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"upkeep-{uuid.uuid4().hex[:8]}")
    config = parse_config(raw_config)
    events, predictions = delta.tables(config).events.uri, config.storage.resolve("predictions")
    delta.Table(events).append(synthetic.generate(200, 1))
    register_model_trained_on(config, events, 0)
    for i in range(30):
        delta.Table(events).append(synthetic.generate(5, 100 + i))
        delta.Table(predictions).append(pa.table({"request_id": [f"q{i}"], "row": [0]}), cdf=True)
    rows = delta.Table(events).count()

    done = maintain(config, events, predictions)
    assert done[events]["files_after"] == 1 and done[events]["files_compacted"] == 31
    assert done[events]["kept_versions"] == [0] and readable(events, 0)  # the model's lineage
    assert not readable(events, 15)  # an unpinned old version's files are gone
    assert delta.Table(events).count() == rows
    # the monitor has read none of the predictions: their files stay, and each commit's rows are read once
    assert done[predictions]["files_after"] == 1 and done[predictions]["files_vacuumed"] == 0
    changes, _ = delta.Table(predictions).changes(None, ["request_id"])
    assert sorted(changes.column("request_id").to_pylist()) == sorted(f"q{i}" for i in range(30))

    maintain(config, events, unpin=True)
    assert not readable(events, 0)  # told to, it drops the pin too
    assert delta.Table(events).count() == rows


def test_maintain_defaults_to_the_loops_tables_and_skips_missing_ones(config: LakeloopConfig) -> None:
    log = config.storage.resolve("feedback")
    for i in range(5):
        delta.Table(log).append(pa.table({"request_id": [f"q{i}"], "label": ["1"]}), cdf=True)
    config = config.model_copy(
        update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": "http://127.0.0.1:9"})}
    )
    args = argparse.Namespace(table=None, retention_hours=0, unpin=True)  # no pins: MLflow is not asked
    outcome = maintain_step(args, config)
    assert [o["table"] for o in outcome.data["tables"]] == [log]  # predictions etc. do not exist yet
    assert "5 -> 1 files" in outcome.summary
