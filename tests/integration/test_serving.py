"""Ray Serve on a local cluster with a model registered in a real mlflow server; logs in Delta."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import ray.data
from deltalake import DeltaTable
from mlflow import MlflowClient
from ray import serve

from pipelines.adapters import delta
from pipelines.adapters.local_services import free_port
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.inference.scoring import predict
from pipelines.scenarios import endpoint as shipped_endpoint
from pipelines.scenarios import synthetic
from pipelines.training.workflow import train_and_register
from tests import helpers
from tests.helpers import demo_raw_config

pytestmark = pytest.mark.integration

FEATURES = ["tenure_months", "monthly_charges", "support_calls", "age", "plan", "contract", "region"]


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: None) -> LakeloopConfig:
    """A trained champion (version 1)."""
    raw = demo_raw_config(tmp_path_factory.mktemp("serving") / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"serve-{uuid.uuid4().hex[:8]}")
    raw["train"].update(max_epochs=2)
    raw["serving"].update(poll_interval_s=0.5)
    raw["serving"]["prediction_log"].update(flush_rows=50, flush_interval_s=0.5)
    config = parse_config(raw)
    delta.tables(config).events.append(synthetic.generate(2000, 3))
    train_and_register(config)
    return config


@pytest.fixture(scope="module")
def endpoint(registered: LakeloopConfig, ray_local: str) -> Iterator[str]:
    with shipped_endpoint.serving(registered, ray_local, free_port()) as url:
        yield url


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def rows(n: int, seed: int = 5) -> pd.DataFrame:
    frame = synthetic.generate(n, seed).to_pandas()[FEATURES]
    return frame.astype(object).where(frame.notna(), None)


def logged_rows(config: LakeloopConfig, table: str = "predictions") -> int:
    return delta.Table(config.storage.resolve(table)).count()


def replica_log(url: str) -> dict:
    """The (only) replica's log counters: rows accepted, written and pending, per log."""
    return httpx.get(f"{url}/model").json()["log"]


def settled_rows(config: LakeloopConfig, table: str = "predictions") -> int:
    """The logged row count once earlier tests' buffered rows have landed (two equal reads a flush apart)."""
    previous = -1
    while (current := logged_rows(config, table)) != previous:
        previous = current
        time.sleep(1.0)
    return current


def wait_for(predicate, timeout: float = 30.0) -> bool:
    """A request that times out or is refused counts as not yet (a new app's first replica holds
    requests until its model has loaded)."""
    return helpers.wait_for(predicate, timeout, ignore=(httpx.TransportError,))


def test_every_mlflow_format_gives_the_same_predictions(endpoint: str, registered: LakeloopConfig) -> None:
    frame = rows(5)
    records = frame.to_dict(orient="records")
    bodies = {
        "dataframe_records": {"dataframe_records": records},
        "dataframe_split": {"dataframe_split": {"columns": FEATURES, "data": frame.values.tolist()}},
        "instances": {"instances": records},
        "inputs (columnar)": {"inputs": {c: frame[c].tolist() for c in FEATURES}},
    }
    answers = {}
    for name, body in bodies.items():
        response = httpx.post(f"{endpoint}/invocations", json=body)
        assert response.status_code == 200, (name, response.text)
        answers[name] = response.json()["predictions"]
    assert all(a == answers["dataframe_records"] for a in answers.values())
    model = mlflow.pyfunc.load_model(f"models:/{registered.mlflow.registered_model}/1")
    expected = model.predict(pd.DataFrame(records))
    got = pd.DataFrame(answers["dataframe_records"])
    np.testing.assert_allclose(got["probability_1"], expected["probability_1"], rtol=1e-5)


def test_health_model_and_docs(endpoint: str) -> None:
    assert httpx.get(f"{endpoint}/health").json()["status"] == "ready"
    model = httpx.get(f"{endpoint}/model").json()
    assert model["version"] == "1" and model["alias"] == "champion" and model["run_id"]
    assert httpx.get(f"{endpoint}/docs").status_code == 200
    schema = httpx.get(f"{endpoint}/openapi.json").json()["components"]["schemas"]["FeatureRecord"]
    assert set(schema["properties"]) == set(FEATURES)


GOOD = synthetic.EXAMPLE_ROW


def ray_metrics() -> str:
    """What Prometheus scrapes from the cluster: every live node's metrics agent."""
    import ray

    return "\n".join(
        httpx.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
        for node in ray.nodes()
        if node["Alive"]
    )


def metric_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{")]


def test_the_endpoints_metrics_reach_rays_prometheus_endpoint(endpoint: str) -> None:
    for _ in range(3):
        assert httpx.post(f"{endpoint}/predict", json={"records": [GOOD, GOOD]}).status_code == 200
    assert httpx.post(f"{endpoint}/predict", json={"records": [{**GOOD, "tenure_months": "x"}]}).status_code == 422
    unseen = {**GOOD, "plan": "a plan never trained on"}
    assert httpx.post(f"{endpoint}/predict", json={"records": [unseen, unseen, GOOD]}).status_code == 200
    wanted = (
        "ray_lakeloop_model_version",
        "ray_lakeloop_unknown_categories_total",
        "ray_lakeloop_predictions_total",
        "ray_lakeloop_prediction_score_bucket",
        "ray_lakeloop_refused_requests_total",
        "ray_lakeloop_log_backlog_rows",
    )
    assert wait_for(lambda: all(metric_lines(ray_metrics(), name) for name in wanted), timeout=90), [
        name for name in wanted if not metric_lines(ray_metrics(), name)
    ]
    text = ray_metrics()
    served = [line for line in metric_lines(text, "ray_lakeloop_model_version") if 'application="lakeloop' in line]
    assert served and all(float(line.rsplit(" ", 1)[1]) == 1.0 for line in served)  # version 1 serves
    refused = metric_lines(text, "ray_lakeloop_refused_requests_total")
    assert any('status="422"' in line and 'route="/predict"' in line for line in refused)
    predicted = metric_lines(text, "ray_lakeloop_predictions_total")
    assert sum(float(line.rsplit(" ", 1)[1]) for line in predicted) >= 9
    unknown = metric_lines(text, "ray_lakeloop_unknown_categories_total")
    assert sum(float(line.rsplit(" ", 1)[1]) for line in unknown if 'feature="plan"' in line) == 2.0
    assert not [line for line in unknown if 'feature="plan"' not in line]


def _post(endpoint: str, path: str, body: object, content_type: str = "application/json") -> httpx.Response:
    text = body if isinstance(body, str) else json.dumps(body)
    return httpx.post(f"{endpoint}{path}", content=text, headers={"content-type": content_type})


@pytest.mark.parametrize(
    ("path", "body", "content_type", "status", "message"),
    [
        (
            "/predict",
            {"records": [{k: v for k, v in GOOD.items() if k != "age"}]},
            "application/json",
            422,
            "records[0].age: Field required",
        ),
        ("/predict", {"records": [{**GOOD, "colour": "red"}]}, "application/json", 422, "colour"),
        ("/predict", {"records": [{**GOOD, "age": "forty"}]}, "application/json", 422, "age"),
        ("/predict", {"records": []}, "application/json", 422, "records"),
        (
            "/invocations",
            {"dataframe_records": [{k: v for k, v in GOOD.items() if k != "age"}]},
            "application/json",
            422,
            "records[0].age: Field required",
        ),
        (
            "/invocations",
            {"dataframe_records": [{**GOOD, "colour": "red"}]},
            "application/json",
            422,
            "records[0]: unknown fields (not configured features): 'colour'",
        ),
        (
            "/invocations",
            {"dataframe_records": [{**GOOD, "support_calls": "many"}]},
            "application/json",
            422,
            "records[0].support_calls: Input should be a valid number",
        ),
        (
            "/invocations",
            '{"dataframe_records": [' + json.dumps(GOOD).replace("80.0", "NaN") + "]}",
            "application/json",
            422,
            "records[0].monthly_charges: Input should be a finite number",
        ),
        ("/invocations", {"dataframe_records": []}, "application/json", 422, "empty batch"),
        ("/invocations", {"dataframe_records": [GOOD] * 1001}, "application/json", 413, "exceeds the limit of 1000"),
        ("/invocations", '{"dataframe_records": [', "application/json", 400, "malformed JSON"),
        ("/invocations", {"dataframe_records": [GOOD]}, "text/csv", 415, "application/json"),
        ("/invocations", {"rows": [GOOD]}, "application/json", 422, "expected exactly one of"),
        ("/feedback", {"request_id": "x", "label": 7}, "application/json", 422, "label"),
        # hostile or odd bodies: each a 4xx naming the problem, never a 500 (issue 13, items 4-7)
        ("/feedback", {"request_id": "x", "row": 2**31, "label": 1}, "application/json", 422, "row"),
        ("/predict", {"records": [GOOD] * 1001}, "application/json", 413, "exceeds the limit of 1000"),
        ("/invocations", "[" * 100_000 + "]" * 100_000, "application/json", 400, "malformed JSON"),
        ("/invocations", '{"dataframe_records": [{"age": ' + "9" * 5000 + "}]}", "application/json", 400, "malformed"),
        ("/invocations", {"dataframe_records": [{**GOOD, "plan": "\ud800"}]}, "application/json", 422, "plan"),
        ("/predict", {"records": [{**GOOD, "region": "\ud800"}]}, "application/json", 422, "lone surrogate"),
        (
            "/invocations",
            {"dataframe_records": [{**GOOD, "note": "x" * 1_100_000}]},
            "application/json",
            413,
            "Too Large",
        ),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem_and_logs_nothing(
    endpoint: str, registered: LakeloopConfig, path: str, body: object, content_type: str, status: int, message: str
) -> None:
    log = "feedback" if path == "/feedback" else "predictions"
    table_before = settled_rows(registered, log)
    accepted_before = replica_log(endpoint)[log]["accepted"]
    response = _post(endpoint, path, body, content_type)
    assert response.status_code == status, response.text
    assert message in response.text
    # Logging happens before the response: a wrongly logged row would already be in the replica's log.
    assert replica_log(endpoint)[log]["accepted"] == accepted_before
    assert logged_rows(registered, log) == table_before


def test_every_route_answers_with_a_server_generated_request_id(endpoint: str) -> None:
    chosen = {"X-Request-Id": "client-chosen"}
    answers = [
        httpx.post(f"{endpoint}/predict", json={"records": [GOOD]}, headers=chosen),
        httpx.post(f"{endpoint}/invocations", json={"dataframe_records": [GOOD]}, headers=chosen),
        httpx.post(f"{endpoint}/feedback", json={"request_id": "r", "label": 1}, headers=chosen),
        httpx.post(f"{endpoint}/predict", json={"records": []}),  # refused ones too
        httpx.get(f"{endpoint}/health"),
        httpx.get(f"{endpoint}/model"),
    ]
    ids = [a.headers["x-lakeloop-request-id"] for a in answers]
    assert len(set(ids)) == len(ids) and "client-chosen" not in ids  # unique per request, never the client's
    assert all(a.json()["request_id"] == i for a, i in zip(answers[:4], ids[:4], strict=True))


def test_a_value_the_model_never_saw_is_scored_as_unknown_among_other_requests(endpoint: str) -> None:
    """Requests are scored in batches: a category the model never saw (a bool where it learned strings)
    encodes as unknown, for its own request only. (A request whose rows make the model raise fails
    alone: tests/unit/test_api_key.py, with a model that raises.)"""
    odd = {**GOOD, "plan": True}  # valid JSON, a bool where the model learned strings
    bodies = [{"records": [odd]}] + [{"records": [GOOD]}] * 15

    def send(body: dict) -> int:
        return httpx.post(f"{endpoint}/predict", json=body, timeout=30).status_code

    accepted_before = replica_log(endpoint)["predictions"]["accepted"]
    with ThreadPoolExecutor(16) as pool:
        codes = list(pool.map(send, bodies))
    assert codes == [200] * 16, codes
    # a batch's rows are spooled in one write before any of its answers: every answered row, and no other
    assert replica_log(endpoint)["predictions"]["accepted"] - accepted_before == codes.count(200)


def test_feedback_lands_in_delta(endpoint: str, registered: LakeloopConfig) -> None:
    answer = httpx.post(f"{endpoint}/predict", json={"records": [GOOD]}).json()
    response = httpx.post(f"{endpoint}/feedback", json={"request_id": answer["request_id"], "label": 1})
    assert response.status_code == 202
    uri = registered.storage.resolve("feedback")
    assert wait_for(
        lambda: (
            DeltaTable.is_deltatable(uri) and answer["request_id"] in DeltaTable(uri).to_pandas()["request_id"].tolist()
        )
    )


def test_batch_api_matches_http_for_path_dataset_and_frame(
    endpoint: str, registered: LakeloopConfig, tmp_path: Path
) -> None:
    source = delta.tables(registered).events.uri
    table = DeltaTable(source).to_pandas().head(40)
    http = httpx.post(f"{endpoint}/invocations", json={"dataframe_records": rows_of(table)}).json()["predictions"]
    expected = dict(zip(table["customer_id"], (p["probability_1"] for p in http), strict=True))
    output = str(tmp_path / "scored")
    for scored in (
        predict(source, output=output, config=registered),
        predict(ray.data.from_pandas(table), config=registered),
        predict(table, config=registered),
    ):
        frame = scored.to_pandas()
        frame = frame[frame["customer_id"].isin(expected)]
        assert len(frame) == 40
        np.testing.assert_allclose(frame["probability_1"], frame["customer_id"].map(expected), rtol=1e-5)
        assert set(frame["model_version"]) == {"1"}
    written = DeltaTable(output).to_pandas()
    assert len(written) == 2000 and set(written["model_name"]) == {registered.mlflow.registered_model}
    rescored = predict(output, config=registered).to_pandas()  # a scored table scores again: columns replaced
    assert list(rescored.columns).count("probability_1") == 1 and len(rescored) == 2000


def test_the_batch_pool_stays_warm_across_calls_and_small_inputs_start_no_actor(registered: LakeloopConfig) -> None:
    from pipelines.inference import scoring

    source = delta.tables(registered).events.uri
    settings = registered.batch_inference.model_copy(update={"inline_rows": 0})  # 2,000 rows: the pool
    pooled = registered.model_copy(update={"batch_inference": settings})
    scoring.release_pools()
    first = predict(source, config=pooled).to_pandas().sort_values("customer_id")
    (pool,) = scoring.warm_pools()
    actors = [actor._actor_id for actor in pool.actors]
    second = predict(source, config=pooled).to_pandas().sort_values("customer_id")
    assert [actor._actor_id for actor in scoring.warm_pools()[0].actors] == actors  # the same actors, warm
    np.testing.assert_array_equal(first["probability_1"], second["probability_1"])
    assert len(first) == 2000
    inline = predict(source, config=registered).to_pandas().sort_values("customer_id")  # within inline_rows
    np.testing.assert_allclose(inline["probability_1"], first["probability_1"], rtol=1e-6)
    scoring.release_pools()
    assert scoring.warm_pools() == []


def test_a_pool_that_cannot_start_is_stopped_and_the_driver_scores_the_input(
    registered: LakeloopConfig, caplog: pytest.LogCaptureFixture
) -> None:
    from ray.util.state import list_actors

    from pipelines.inference import scoring

    # an actor asking for more CPUs than the cluster has never starts (as one whose CPUs Serve holds)
    settings = registered.batch_inference.model_copy(update={"cpus_per_actor": 3.0, "actor_start_timeout_s": 5.0})
    starved = registered.model_copy(update={"batch_inference": settings})
    table = DeltaTable(delta.tables(registered).events.uri).to_pandas().head(300)
    scoring.release_pools()
    with caplog.at_level(logging.WARNING, logger=scoring.__name__):
        scored = predict(ray.data.from_pandas(table), config=starved).to_pandas().sort_values("customer_id")
    assert "no scoring actor started within 5.0s" in caplog.text
    inline = predict(table, config=registered).to_pandas().sort_values("customer_id")
    assert len(scored) == 300
    np.testing.assert_allclose(scored["probability_1"], inline["probability_1"], rtol=1e-6)
    assert scoring.warm_pools() == []

    def scoring_actors() -> list:
        return list_actors(filters=[("class_name", "=", "ScoringActor"), ("state", "!=", "DEAD")])

    assert helpers.wait_for(lambda: not scoring_actors(), 30), scoring_actors()


def test_the_pool_scores_a_frame_while_every_cpu_is_held(registered: LakeloopConfig) -> None:
    """Serve's replicas and the pool's actor hold every CPU, so no Ray Data task can start: a DataFrame
    input and the pool's output need none (ray.data.from_arrow_refs's one-CPU metadata tasks hung a CI
    run here, after the pool took the last free half CPU)."""
    from pipelines.inference import scoring

    settings = registered.batch_inference.model_copy(update={"inline_rows": 0, "min_actors": 1, "max_actors": 1})
    pooled = registered.model_copy(update={"batch_inference": settings})
    table = DeltaTable(delta.tables(registered).events.uri).to_pandas().head(300)
    scoring.release_pools()
    spare = math.floor((ray.available_resources().get("CPU", 0.0) - settings.cpus_per_actor) * 1e4) / 1e4
    holder = ray.remote(num_cpus=spare)(Holder).remote() if spare > 0 else None
    try:
        if holder is not None:
            ray.get(holder.ready.remote(), timeout=60)
        scored = predict(table, config=pooled).to_pandas().sort_values("customer_id")
        assert scoring.warm_pools(), "the pool did not start: the test did not hold the CPUs it meant to"
    finally:
        scoring.release_pools()
        if holder is not None:
            ray.kill(holder)
    inline = predict(table, config=registered).to_pandas().sort_values("customer_id")
    np.testing.assert_allclose(scored["probability_1"], inline["probability_1"], rtol=1e-6)


class Holder:
    """An actor that only holds the CPUs it was given."""

    def ready(self) -> bool:
        return True


def rows_of(frame: pd.DataFrame) -> list[dict]:
    features = frame[FEATURES]
    return features.astype(object).where(features.notna(), None).to_dict(orient="records")


def _model_of_its_own(registered: LakeloopConfig, versions: int) -> LakeloopConfig:
    """`registered`'s configuration following a registered model of its own, holding `versions`
    versions of the champion's run (version 1 the champion): a test can move its alias alone."""
    client = MlflowClient(registered.mlflow.tracking_uri)
    name = f"{registered.mlflow.registered_model}-{uuid.uuid4().hex[:6]}"
    run_id = client.get_model_version(registered.mlflow.registered_model, "1").run_id
    mlflow.set_tracking_uri(registered.mlflow.tracking_uri)
    for _ in range(versions):
        mlflow.register_model(f"runs:/{run_id}/model", name)
    client.set_registered_model_alias(name, "champion", "1")
    return registered.model_copy(update={"mlflow": registered.mlflow.model_copy(update={"registered_model": name})})


def test_alias_move_under_load_has_no_failures_and_every_served_row_is_logged(
    endpoint: str, registered: LakeloopConfig, ray_local: str
) -> None:
    """On an application of its own following a model of its own (no other test sees the move); it
    ends by deleting that application, to prove the drain flushes the log."""
    config = _model_of_its_own(registered, versions=2)
    shipped_endpoint.deploy(registered, ray_local, port_of(endpoint), shipped_endpoint.variant(config, "swap", "/swap"))
    url = f"{endpoint}/swap"
    assert wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, 60)
    served_before = settled_rows(registered)
    statuses: Counter = Counter()
    versions: Counter = Counter()
    served = [0]
    stop = threading.Event()
    lock = threading.Lock()
    body = {"records": rows(3).to_dict(orient="records")}

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                response = http.post(f"{url}/predict", json=body)
                with lock:
                    statuses[response.status_code] += 1
                    if response.status_code == 200:
                        versions[response.json()["model"]["version"]] += 1
                        served[0] += 3

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        assert wait_for(lambda: versions["1"] >= 20, 30)  # traffic on the old version first
        MlflowClient(config.mlflow.tracking_uri).set_registered_model_alias(
            config.mlflow.registered_model, "champion", "2"
        )
        assert wait_for(lambda: httpx.get(f"{url}/model").json()["version"] == "2", 15)
        assert wait_for(lambda: versions["2"] >= 20, 30)  # and on the new one, under the same load
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert versions["1"] > 0 and versions["2"] > 0
    serve.delete("swap")  # drains the replica, whose shutdown flushes its buffer
    assert wait_for(lambda: logged_rows(registered) - served_before == served[0], 30), (
        logged_rows(registered) - served_before,
        served[0],
    )


def test_with_an_api_key_an_unauthenticated_predict_is_401_and_not_logged(
    endpoint: str, registered: LakeloopConfig, ray_local: str
) -> None:
    shipped_endpoint.deploy(
        registered,
        ray_local,
        port_of(endpoint),
        shipped_endpoint.variant(registered, "secured", "/secured", api_key="integration-key"),
    )
    try:
        assert wait_for(lambda: httpx.get(f"{endpoint}/secured/health").status_code == 200, 60)
        before = settled_rows(registered)
        body = {"records": [GOOD]}
        refused = httpx.post(f"{endpoint}/secured/predict", json=body)
        assert refused.status_code == 401 and "predictions" not in refused.json()
        wrong = httpx.post(f"{endpoint}/secured/predict", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = httpx.post(
            f"{endpoint}/secured/predict", json=body, headers={"Authorization": "Bearer integration-key"}
        )
        assert allowed.status_code == 200 and len(allowed.json()["predictions"]) == 1
        assert wait_for(lambda: logged_rows(registered) == before + 1, 15)  # only the authorised row
    finally:
        serve.delete("secured")


def _running(app: str) -> int:
    return serve.status().applications[app].deployments["ModelServer"].replica_states.get("RUNNING", 0)


def test_serve_autoscaling_adds_replicas_under_load_and_removes_them_after(
    endpoint: str, registered: LakeloopConfig, ray_local: str
) -> None:
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
    }
    shipped_endpoint.deploy(
        registered,
        ray_local,
        port_of(endpoint),
        shipped_endpoint.variant(registered, "autoscaled", "/autoscaled", autoscaling_config=autoscaling),
    )
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                http.post(f"{endpoint}/autoscaled/predict", json={"records": [GOOD] * 20})

    try:
        assert wait_for(lambda: httpx.get(f"{endpoint}/autoscaled/health").status_code == 200, 60)
        assert _running("autoscaled") == 1
        threads = [threading.Thread(target=client) for _ in range(12)]
        for thread in threads:
            thread.start()
        scaled_up = wait_for(lambda: _running("autoscaled") == 2, 60)
        stop.set()
        for thread in threads:
            thread.join()
        assert scaled_up, "no second replica under load"
        assert wait_for(lambda: _running("autoscaled") == 1, 60), "the extra replica stayed after the load stopped"
    finally:
        stop.set()
        serve.delete("autoscaled")
