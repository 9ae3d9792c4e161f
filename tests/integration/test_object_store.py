"""Delta tables on a real S3-protocol server (moto's standalone server) and MLflow on a real
PostgreSQL: concurrent writers lose no commit, and concurrent promotions under load still let
exactly one win, with no lock error. The whole loop on this storage runs in test_multinode."""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pyarrow as pa
import pytest
from mlflow import MlflowClient

from pipelines.adapters import delta
from pipelines.adapters.registry import Registry
from pipelines.core.gate import GateDecision

pytestmark = pytest.mark.integration

WRITERS, COMMITS = 4, 10


@pytest.fixture
def s3(object_store, monkeypatch: pytest.MonkeyPatch):
    """The object store, reachable through the standard AWS variables (as on a cluster node)."""
    for name, value in object_store.env.items():
        monkeypatch.setenv(name, value)
    return object_store


def append_commits(uri: str, writer: int, commits: int) -> list[float]:
    """One writer process: `commits` appends of one row each through lakeloop's Delta adapter; the
    seconds each commit took."""
    seconds = []
    for number in range(commits):
        started = time.perf_counter()
        delta.Table(uri).append(pa.table({"writer": [writer], "commit": [number]}))
        seconds.append(time.perf_counter() - started)
    return seconds


def test_concurrent_appenders_on_s3_lose_no_commit(s3) -> None:
    """deltalake 1.6 commits to S3 with a conditional put (If-None-Match: *, which the server
    enforces): of two writers racing for a version one gets 412, re-reads and takes the next one."""
    uri = s3.uri(f"concurrent-{uuid.uuid4().hex[:8]}")
    delta.Table(uri).append(pa.table({"writer": [-1], "commit": [-1]}))  # version 0
    with ProcessPoolExecutor(WRITERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(append_commits, [uri] * WRITERS, range(WRITERS), [COMMITS] * WRITERS))
    rows = delta.Table(uri).read().to_pandas()
    written = sorted(zip(rows["writer"], rows["commit"], strict=True))
    assert written == sorted([(-1, -1)] + [(w, c) for w in range(WRITERS) for c in range(COMMITS)])
    versions = sorted(entry["version"] for entry in delta.Table(uri).open().history())
    assert versions == list(range(WRITERS * COMMITS + 1))  # contiguous: no commit lost or overwritten


def test_the_s3_store_refuses_a_second_create_of_the_same_object(s3) -> None:
    """What the commit protocol above rests on: the server enforces If-None-Match: * (a store that
    ignored it would let two writers both write version N, and one commit would be lost)."""
    import boto3
    from botocore.exceptions import ClientError

    client = boto3.client("s3", endpoint_url=s3.endpoint)
    key = f"probe-{uuid.uuid4().hex[:8]}"
    client.put_object(Bucket=s3.bucket, Key=key, Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=s3.bucket, Key=key, Body=b"second", IfNoneMatch="*")


def test_mlflow_on_postgres_two_promotions_at_once_one_wins_under_load(mlflow_at_scale: str, object_store) -> None:
    client = MlflowClient(mlflow_at_scale)
    name = f"pg-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    rounds = 5
    versions = [
        client.create_model_version(name, source=object_store.uri(f"stub/{name}")).version
        for _ in range(1 + 2 * rounds)
    ]
    registry = Registry.connect(mlflow_at_scale, name)
    registry.promote(str(versions[0]), registry.state(), GateDecision(True, "first champion"))

    stop, errors = threading.Event(), []

    def tune_trial(number: int) -> None:  # a Tune trial logging metrics, as fast as it can
        experiment = client.create_experiment(f"{name}-trial-{number}")
        run = client.create_run(experiment).info.run_id
        step = 0
        while not stop.is_set():
            try:
                client.log_metric(run, "loss", 1.0 / (step + 1), step=step)
            except Exception as exc:  # noqa: BLE001 - collected: the test asserts there are none
                errors.append(f"trial {number}: {exc}")
            step += 1

    def replica_polling() -> None:  # a Serve replica following the alias
        while not stop.is_set():
            try:
                Registry.connect(mlflow_at_scale, name).resolve("champion")
            except Exception as exc:  # noqa: BLE001
                errors.append(f"poll: {exc}")

    load = [threading.Thread(target=tune_trial, args=(n,)) for n in range(4)] + [
        threading.Thread(target=replica_polling)
    ]
    for thread in load:
        thread.start()
    winners = []
    try:
        for round_ in range(rounds):
            compared = registry.state()
            pair = [str(v) for v in versions[1 + 2 * round_ : 3 + 2 * round_]]
            start = threading.Barrier(2)

            def promote(version: str, compared=compared, start=start) -> GateDecision:
                start.wait()
                return Registry.connect(mlflow_at_scale, name).promote(version, compared, GateDecision(True, "race"))

            with ThreadPoolExecutor(2) as pool:
                decisions = list(pool.map(promote, pair))
            winners.append(sum(d.promote for d in decisions))
    finally:
        stop.set()
        for thread in load:
            thread.join()
    assert winners == [1] * rounds  # compare-and-set: exactly one of each pair replaced the champion
    assert errors == []  # no lock error (or any other) under concurrent logging, polling and promotion
    assert registry.state().epoch == rounds + 1


def test_the_log_and_the_monitor_reach_the_store_through_the_configs_storage_options(
    object_store, monkeypatch: pytest.MonkeyPatch, raw_config: dict, tmp_path
) -> None:
    """The endpoint only in `storage.storage_options` (credentials in the environment, as they must
    be): a read or write that dropped the options would go to AWS itself and fail here."""
    from datetime import UTC, datetime, timedelta

    from pipelines.adapters.log_spool import LogSpool
    from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row, prediction_rows, predictions_schema
    from pipelines.core.config import parse_config
    from pipelines.monitoring import check
    from pipelines.scenarios import synthetic

    for name, value in object_store.env.items():
        if name not in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "MLFLOW_S3_ENDPOINT_URL"):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    raw_config["storage"].update(
        root=object_store.uri(f"options-{uuid.uuid4().hex[:8]}"),
        storage_options={"AWS_ENDPOINT_URL": object_store.endpoint, "AWS_ALLOW_HTTP": "true"},
    )
    raw_config["monitor"].update(window_rows=100)
    config = parse_config(raw_config)
    log = config.serving.prediction_log
    dataset = config.dataset

    def spool(table: str, schema: pa.Schema) -> LogSpool:
        return LogSpool(delta.tables(config).named(table), schema, tmp_path / "spool", 1000, 60, 1 << 20)

    predictions, feedback = (
        spool(log.predictions_table, predictions_schema(dataset)),
        spool(log.feedback_table, FEEDBACK_SCHEMA),
    )
    features = synthetic.generate(250, 3).to_pandas()[dataset.feature_names]
    now = datetime.now(UTC)
    for number, first in enumerate(range(0, 250, 5)):
        chunk = features.iloc[first : first + 5].to_dict(orient="list")
        at = now + timedelta(milliseconds=number)
        predictions.add(prediction_rows(f"r{number}", "m", "1", at, chunk, [{"prediction": 0}] * 5, dataset))
    feedback.add([feedback_row("r0", 0, dataset.classes[0], now)])
    predictions.close()
    feedback.close()

    traffic, labelled = check._traffic(config), check._labels(config)
    assert [len(w.rows) for w in traffic.windows] == [100, 100] and traffic.pending == 50
    assert labelled.pending == 1  # the label joined its served row, read from the store


def _options_only(object_store, mlflow_server: str, raw_config: dict, tmp_path, prefix: str) -> tuple[str, dict]:
    """A user's environment for lakeloop commands with the store's endpoint only in
    `storage.storage_options` (the credentials in the environment); (storage root, environment)."""
    from tests.helpers import user_environment

    root = object_store.uri(f"{prefix}-{uuid.uuid4().hex[:8]}")
    raw_config["storage"].update(
        root=root, storage_options={"AWS_ENDPOINT_URL": object_store.endpoint, "AWS_ALLOW_HTTP": "true"}
    )
    raw_config["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"{prefix}-{uuid.uuid4().hex[:8]}")
    raw_config["train"].update(num_workers=1, max_epochs=2, source="events")
    env = user_environment(raw_config, tmp_path)
    for name in ("AWS_ENDPOINT_URL", "AWS_ALLOW_HTTP", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(name, None)
    env |= {k: v for k, v in object_store.env.items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    env |= {"MLFLOW_TRACKING_URI": mlflow_server, "AWS_REGION": "us-east-1"}
    return root, env


def test_train_and_batch_inference_reach_the_store_through_the_configs_storage_options(
    object_store, mlflow_server: str, raw_config: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`lakeloop train` and `lakeloop predict` as a user runs them, with the endpoint only in
    `storage.storage_options` and the credentials in the environment: Ray Data's reads and writes and
    Ray Train's checkpoints must all use the options (Train's checkpoints went to AWS itself before)."""
    from tests.helpers import lakeloop

    root, env = _options_only(object_store, mlflow_server, raw_config, tmp_path, "train")
    generated = lakeloop("data", "generate", "--rows", "800", env=env)
    assert generated.returncode == 0, generated.stderr
    trained = lakeloop("train", "--json", env=env)
    assert trained.returncode == 0, trained.stderr[-2000:]
    outcome = json.loads(trained.stdout)
    assert outcome["model_version"] == "1" and outcome["lineage"]["tables"][0]["uri"] == f"{root}/events"
    scored = lakeloop("predict", "--input", "events", "--output", "scored", "--json", env=env)
    assert scored.returncode == 0, scored.stderr[-2000:]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, env[name])
    assert delta.Table(f"{root}/scored", raw_config["storage"]["storage_options"]).count() == 800


def test_the_feature_tables_path_runs_on_the_store(
    object_store, mlflow_server: str, raw_config: dict, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worked example as a user runs it, every table on the S3 server (the endpoint only in
    `storage.storage_options`): generate the feature tables, build the training set on Ray, train on
    it, materialize the online store, score the label events in batch (joined point-in-time), and a
    replica that looks the views up by key."""
    from fastapi.testclient import TestClient

    from pipelines.core.config import parse_config
    from pipelines.scenarios.feature_tables import features_section
    from serve.app import create_api
    from tests.fakes import FakeSource, UnbatchedServer
    from tests.helpers import lakeloop, write_config

    root, env = _options_only(object_store, mlflow_server, raw_config, tmp_path, "features")
    raw_config["dataset"]["table"] = "training_set"
    raw_config["features"] = features_section(buckets=2)
    write_config(raw_config, tmp_path / "lakeloop.yaml")
    steps = [
        ("data", "generate", "--feature-tables", "--rows", "800"),
        ("features", "build", "--json"),
        ("train", "--json"),
        ("features", "materialize", "--json"),
        ("predict", "--input", "label_events", "--output", "scored", "--json"),
    ]
    outcomes = {}
    for step in steps:
        ran = lakeloop(*step, env=env)
        assert ran.returncode == 0, (step, ran.stderr[-2000:])
        outcomes[step[:2]] = ran.stdout
    assert json.loads(outcomes[("features", "build")])["rows"] == 800
    materialized = json.loads(outcomes[("features", "materialize")])["views"]
    assert [m["store"] for m in materialized] == [f"{root}/online_profile", f"{root}/online_usage"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, env[name])
    options = raw_config["storage"]["storage_options"]
    assert delta.Table(f"{root}/scored", options).count() == 800
    config = parse_config(raw_config)
    server = UnbatchedServer(config.model_dump_json(), FakeSource())
    try:
        api = create_api(config, server.access)
        api.state.server, api.state.metrics = server, server.metrics
        customer = delta.Table(f"{root}/label_events", options).read(["customer_id"]).column(0)[0].as_py()
        answer = TestClient(api).post("/predict", json={"records": [{"customer_id": customer}]})
        assert answer.status_code == 200, answer.text
        assert server.describe_features()["profile"]["lookups"] == {"hit": 1}
    finally:
        server.close()
