"""Run by test_multinode in a fresh process: a real three-node Ray cluster on this host
(`ray.cluster_utils.Cluster`: a head and two worker nodes carrying a custom `worker` resource).
It trains with one worker per node, batch-scores across nodes, serves two replicas, removes the
node under one replica while a client keeps calling, and prints what happened as JSON."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import ray
from mlflow import MlflowClient
from ray import serve
from ray.cluster_utils import Cluster

from pipelines.adapters import delta, serving
from pipelines.adapters.local_services import free_port
from pipelines.core import synthetic
from pipelines.core.config import parse_config
from pipelines.inference import batch as batch_inference
from pipelines.training.workflow import train_and_register
from tests.helpers import demo_raw_config, serve_app

RECORD = {
    "tenure_months": 3,
    "monthly_charges": 80.0,
    "support_calls": 1,
    "age": 40,
    "plan": "basic",
    "contract": "one-year",
    "region": "north",
}


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


def main(root: str, tracking_uri: str) -> None:
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
        raw = demo_raw_config(Path(root))
        raw["ray"]["address"] = cluster.address
        raw["mlflow"].update(tracking_uri=tracking_uri, registered_model=f"multinode-{uuid.uuid4().hex[:8]}")
        raw["train"].update(max_epochs=2, num_workers=2, placement_strategy="STRICT_SPREAD")
        raw["batch_inference"].update(min_actors=2, max_actors=2, cpus_per_actor=1, batch_size=500)  # one node each
        raw["serving"]["prediction_log"].update(flush_rows=20, flush_interval_s=0.5)
        config = parse_config(raw)
        delta.append(config.table_uri, synthetic.generate(3000, 1))

        outcome = train_and_register(config)
        tags = MlflowClient(tracking_uri).get_run(outcome.run_id).data.tags
        facts["train_nodes"] = tags["lakeloop.worker_nodes"].split(",")

        scored = batch_inference.predict(config.table_uri, config=config).materialize()
        facts["scored_rows"] = scored.count()
        used = re.findall(r"(\d+) nodes used", scored.stats())
        facts["batch_nodes_used"] = max(int(n) for n in used) if used else 0

        # conf/serve.yaml, deployed the one way lakeloop deploys, with two fixed replicas on the worker nodes
        app = serve_app(
            config,
            "lakeloop",
            "/",
            num_replicas=2,
            autoscaling_config=None,
            ray_actor_options={"num_cpus": 0.25, "resources": {"worker": 0.1}},
        )
        url = serving.deploy(
            {
                "proxy_location": "HeadOnly",
                "http_options": {"host": "127.0.0.1", "port": free_port()},
                "applications": [app],
            },
            f"http://127.0.0.1:{dashboard_port}",
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and httpx.get(f"{url}/health", timeout=10).status_code != 200:
            time.sleep(0.5)
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
    main(sys.argv[1], sys.argv[2])
