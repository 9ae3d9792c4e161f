"""Run by test_multinode in a fresh process: a real three-node Ray cluster on this host
(`ray.cluster_utils.Cluster`: a head and two worker nodes carrying a custom `worker` resource),
with every table on the object store (s3://..., reached through the standard AWS variables the
test sets) and MLflow on PostgreSQL with its artifacts on the same store: no step may depend on a
node's local disk. It trains with one worker per node, batch-scores across nodes into a table on
the store, runs the feature tables path (a training set built by a join bucketed over the nodes, the
views materialized to Redis, an app whose replicas on both worker nodes look them up by key), serves
two replicas, closes the loop (drifted traffic and labels logged to the store, the
monitor reads them and resubmits training through the Jobs API), then removes the node under one
replica while a client keeps calling, and prints what happened as JSON."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import ray
from mlflow import MlflowClient
from ray import serve
from ray.cluster_utils import Cluster

from pipelines.adapters import delta, ray_serve
from pipelines.adapters.local_services import free_port
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.feature_tables.build import build_training_set
from pipelines.feature_tables.materialize import materialize
from pipelines.inference import scoring
from pipelines.monitoring import retraining
from pipelines.monitoring.check import run_once
from pipelines.scenarios import endpoint as shipped_endpoint
from pipelines.scenarios import synthetic
from pipelines.scenarios.feature_tables import TABLES, feature_tables, features_section
from pipelines.training.workflow import train_and_register
from tests.helpers import customers_of, demo_raw_config, newest_event, offline_values, wait_for

RECORD = synthetic.EXAMPLE_ROW


def replicas(url: str, calls: int = 40) -> dict[str, str]:
    """Replica id -> node id, for the replicas that answered `calls` requests (a request that fails
    while a node is going away counts as no answer)."""
    found = {}
    for _ in range(calls):
        try:
            response = httpx.get(f"{url}/model", timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            answer = response.json()
            found[answer["replica"]] = answer["node_id"]
    return found


def main(root: str, tracking_uri: str, redis_url: str) -> None:
    dashboard_port = free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": free_port(),
        },
    )
    workers = [cluster.add_node(num_cpus=1, resources={"worker": 1}) for _ in range(2)]
    ray.init(address=cluster.address, logging_level="WARNING")
    facts: dict = {"nodes": {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}}
    try:
        raw = demo_raw_config(Path("unused"))
        raw["storage"]["root"] = root  # s3://bucket/prefix
        raw["ray"].update(address=cluster.address, dashboard=f"http://127.0.0.1:{dashboard_port}")
        raw["monitor"].update(window_rows=200)
        raw["mlflow"].update(tracking_uri=tracking_uri, registered_model=f"multinode-{uuid.uuid4().hex[:8]}")
        raw["train"].update(max_epochs=2, num_workers=2, rows_per_worker=100, placement_strategy="STRICT_SPREAD")
        raw["batch_inference"].update(min_actors=2, max_actors=2, cpus_per_actor=1, batch_size=500)  # one node each
        raw["serving"]["prediction_log"].update(flush_rows=20, flush_interval_s=0.5)
        config = parse_config(raw)
        delta.tables(config).events.append(synthetic.generate(3000, 1))

        outcome = train_and_register(config)
        tags = MlflowClient(tracking_uri).get_run(outcome.run_id).data.tags
        facts["train_nodes"] = tags["lakeloop.worker_nodes"].split(",")
        facts["lineage"] = tags["lakeloop.tables"]
        facts["artifact_uri"] = MlflowClient(tracking_uri).get_run(outcome.run_id).info.artifact_uri

        scored = scoring.predict(delta.tables(config).events.uri, output="scored", config=config).materialize()
        facts["scored_rows"] = scored.count()
        facts["scored_rows_on_store"] = delta.Table(config.storage.resolve("scored")).count()

        http_port = free_port()
        facts["features"] = _feature_tables(config, redis_url, dashboard_port, http_port)
        url = _deploy_on_workers(config, dashboard_port, http_port)
        assert ray_serve.wait_ready(url, 180), "the endpoint never loaded the champion"
        facts.update(_close_the_loop(config, url))
        before = set(replicas(url).values())
        facts["replica_nodes_before"] = sorted(before)

        statuses: list[tuple[float, int]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=10) as http:
                while not stop.is_set():
                    try:
                        code = http.post(f"{url}/predict", json={"records": [RECORD]}).status_code
                    except httpx.HTTPError:
                        code = 0
                    statuses.append((time.monotonic(), code))
                    time.sleep(0.02)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        try:
            facts.update(_remove_a_replica_node(cluster, workers, before, url, statuses))
        finally:
            stop.set()
            thread.join()
        after_recovery = [c for t, c in statuses if facts["recovered_at"] is not None and t > facts["recovered_at"]]
        facts["requests_after_recovery"] = len(after_recovery)
        facts["failed_after_recovery"] = sum(1 for c in after_recovery if c != 200)
        facts["requests_before_removal"] = sum(1 for t, _ in statuses if t < facts["removed_at"])
        facts["failed_before_removal"] = sum(1 for t, c in statuses if t < facts["removed_at"] and c != 200)
        facts["failed_during_recovery"] = sum(1 for t, c in statuses if c != 200 and t >= facts["removed_at"])
        after = replicas(url)
        facts["replicas_after"] = len(after)
        facts["replica_nodes_after"] = sorted(set(after.values()))
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(facts))


def _serve_config(config: LakeloopConfig, http_port: int, name: str, route: str) -> dict:
    """conf/serve.yaml with two fixed replicas on the worker nodes, as the only application (on the
    one HTTP port Serve keeps for its life)."""
    app = shipped_endpoint.variant(
        config,
        name,
        route,
        num_replicas=2,
        autoscaling_config=None,
        ray_actor_options={"num_cpus": 0.25, "resources": {"worker": 0.1}},
    )
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [app],
    }


def _deploy_on_workers(
    config: LakeloopConfig, dashboard_port: int, http_port: int, name: str = "lakeloop", route: str = "/"
) -> str:
    """The application deployed the one way lakeloop deploys; its URL."""
    base = ray_serve.deploy(_serve_config(config, http_port, name, route), f"http://127.0.0.1:{dashboard_port}")
    return base + route.rstrip("/")


def _feature_tables(config: LakeloopConfig, redis_url: str, dashboard_port: int, http_port: int) -> dict:
    """The worked example's tables on the store; the training set built on the cluster (the join's
    buckets spread over the nodes); the views materialized to Redis; the champion (its features are
    the example's) served by replicas on both worker nodes that take only the entity key."""
    raw = json.loads(config.model_dump_json())
    raw["dataset"]["table"] = "training_set"
    raw["features"] = {**features_section(buckets=4), "online": {"store": "redis", "redis_url": redis_url}}
    raw["serving"]["prediction_log"].update(  # its own logs: the loop below counts and reads the demo's
        predictions_table="feature_predictions", feedback_table="feature_feedback", shadow_table="feature_shadow"
    )
    features_config = parse_config(raw)
    generated = feature_tables(1200, 9, customers=300)
    for part, name in TABLES.items():
        delta.tables(features_config).named(name).append(getattr(generated, part))
    built = build_training_set(features_config)
    materialized = materialize(features_config, newest_event(generated))
    url = _deploy_on_workers(features_config, dashboard_port, http_port, "features", "/features")
    assert ray_serve.wait_ready(url, 180), "the feature tables' endpoint never loaded the champion"
    # ready is one replica answering, and the lookups below must reach both: in one CI emulation only
    # one replica had looked up when the requests were done
    assert wait_for(lambda: len(replicas(url, calls=10)) == 2, 120), "the two replicas never both answered"
    customers = customers_of(generated)
    expected = offline_values(features_config, generated, newest_event(generated), customers)
    answered, replicas_seen = 0, {}
    with httpx.Client(base_url=url, timeout=30) as http:
        for first in range(0, 300, 10):
            chunk = customers[first : first + 10]
            answer = http.post("/predict", json={"records": [{"customer_id": c} for c in chunk]})
            assert answer.status_code == 200, answer.text
            answered += len(chunk)
        for _ in range(20):  # each replica's own lookup counts, and its node
            model = http.get("/model").json()
            replicas_seen[model["replica"]] = (model["node_id"], model["features"]["usage"].get("lookups", {}))
    log = delta.tables(features_config).predictions
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and log.count() < answered:
        time.sleep(0.5)
    ray_serve.remove_application(
        f"http://127.0.0.1:{dashboard_port}",
        _serve_config(features_config, http_port, "features", "/features"),
        "features",
    )
    logged = log.read().to_pandas().drop_duplicates("customer_id").set_index("customer_id")
    served = logged.loc[customers, "monthly_charges"].to_numpy(dtype=float)
    mismatched = int((~np.isclose(served, expected["monthly_charges"].to_numpy(dtype=float), equal_nan=True)).sum())
    return {
        "built_rows": built.rows,
        "online_versions": [m.version for m in materialized],
        "online_entities": [m.entities for m in materialized],
        "answered_rows": answered,
        "logged_rows": int(log.count()),
        "lookup_mismatches": mismatched,
        "replica_nodes": sorted(node for node, lookups in replicas_seen.values() if lookups.get("hit")),
    }


def _close_the_loop(config: LakeloopConfig, url: str) -> dict:
    """Drifted traffic and labels through the endpoint (logged to the store by the replicas); the
    monitor reads them from the store and submits retraining through the Jobs API; the job trains
    from the store and the gate decides."""
    frame = synthetic.generate(600, 41).to_pandas()[list(RECORD)]
    frame["monthly_charges"] += 60.0  # far outside the training range: every window drifts
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")  # null: a missing value
    served = []
    with httpx.Client(base_url=url, timeout=30) as http:
        for first in range(0, len(records), 10):
            answer = http.post("/predict", json={"records": records[first : first + 10]})
            assert answer.status_code == 200, answer.text
            served.append(answer.json()["request_id"])
        for request_id in served[:20]:
            assert http.post("/feedback", json={"request_id": request_id, "row": 0, "label": 1}).status_code == 202
    log = config.serving.prediction_log
    storage = config.storage
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        delta.Table(storage.resolve(log.predictions_table)).count() < len(records)
        or delta.Table(storage.resolve(log.feedback_table)).count() < 20
    ):
        time.sleep(0.5)
    outcome = run_once(config)
    if outcome.submitted:  # what it trains is other tests' business; here it must not hold the CPUs
        retraining.jobs(config).stop(outcome.submission_id)
    return {
        "logged_on_store": delta.Table(storage.resolve(log.predictions_table)).count(),
        "feedback_on_store": delta.Table(storage.resolve(log.feedback_table)).count(),
        "monitor_windows": len(outcome.windows),
        "monitor_drifted_windows": sum(bool(w.drift) for w in outcome.windows),
        "retraining_submitted": outcome.submitted,
    }


def _remove_a_replica_node(cluster: Cluster, workers: list, before: set[str], url: str, statuses: list) -> dict:
    """Remove the node of one replica while the client calls; wait for a replacement replica to
    answer from a live node, then let 100 more requests run."""
    _wait_for_requests(statuses, 50)  # traffic flows before the node goes
    victim = next(w for w in workers if w.node_id in before)
    removed_at = time.monotonic()
    cluster.remove_node(victim)
    recovered_at = None
    while time.monotonic() - removed_at < 120:
        answering = replicas(url, calls=20)
        if len(answering) == 2 and victim.node_id not in answering.values() and _running_replicas() == 2:
            recovered_at = time.monotonic()
            break
        time.sleep(1)
    _wait_for_requests(statuses, len(statuses) + 100)  # and after the replacement answers
    return {
        "removed": victim.node_id,
        "removed_at": removed_at,
        "recovered_at": recovered_at,
        "recovered_after_s": None if recovered_at is None else recovered_at - removed_at,
    }


def _wait_for_requests(statuses: list, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while len(statuses) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _running_replicas() -> int:
    status = serve.status().applications["lakeloop"].deployments["ModelServer"]
    return status.replica_states.get("RUNNING", 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
