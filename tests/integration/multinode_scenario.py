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

from pipelines import batch_inference, delta_tables, synthetic
from pipelines.config import parse_config
from pipelines.stack import free_port
from pipelines.train import train_and_register
from serve.app import build_deployment
from tests.helpers import demo_raw_config

RECORD = {"tenure_months": 3, "monthly_charges": 80.0, "support_calls": 1, "age": 40, "plan": "basic",
          "contract": "one-year", "region": "north"}


def replicas(url: str, calls: int = 40) -> dict[str, str]:
    """Replica id -> node id, for the replicas that answered `calls` requests."""
    answers = [httpx.get(f"{url}/model", timeout=10).json() for _ in range(calls)]
    return {a["replica"]: a["node_id"] for a in answers}


def main(root: str, tracking_uri: str) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False, "dashboard_agent_listen_port": free_port()})
    workers = [cluster.add_node(num_cpus=1, resources={"worker": 1}) for _ in range(2)]
    ray.init(address=cluster.address, logging_level="WARNING")
    facts: dict = {"nodes": {"head": cluster.head_node.node_id, "workers": [w.node_id for w in workers]}}
    try:
        raw = demo_raw_config(Path(root))
        raw["ray"]["address"] = cluster.address
        raw["mlflow"].update(tracking_uri=tracking_uri, registered_model=f"multinode-{uuid.uuid4().hex[:8]}")
        raw["train"].update(max_epochs=2, num_workers=2, placement_strategy="STRICT_SPREAD")
        raw["batch_inference"].update(min_actors=2, max_actors=2, batch_size=500)
        raw["serving"]["prediction_log"].update(flush_rows=20, flush_interval_s=0.5)
        config = parse_config(raw)
        delta_tables.append(config.table_uri, synthetic.generate(3000, 1))

        outcome = train_and_register(config)
        tags = MlflowClient(tracking_uri).get_run(outcome.run_id).data.tags
        facts["train_nodes"] = tags["lakeloop.worker_nodes"].split(",")

        scored = batch_inference.predict(config.table_uri, config=config).materialize()
        facts["scored_rows"] = scored.count()
        used = re.findall(r"(\d+) nodes used", scored.stats())
        facts["batch_nodes_used"] = max(int(n) for n in used) if used else 0

        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        app = build_deployment(config).options(
            num_replicas=2, autoscaling_config=None, ray_actor_options={"num_cpus": 0.25, "resources": {"worker": 0.1}})
        serve.run(app.bind(config.model_dump_json()), name="lakeloop", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
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

        thread = threading.Thread(target=client)
        thread.start()
        time.sleep(3)
        victim = next(w for w in workers if w.node_id in before)
        removed_at = time.monotonic()
        cluster.remove_node(victim)
        facts["removed"] = victim.node_id
        recovered = None
        while time.monotonic() - removed_at < 120:
            answering = replicas(url, calls=20)
            if len(answering) == 2 and victim.node_id not in answering.values() and _running_replicas() == 2:
                recovered = time.monotonic() - removed_at  # a replacement replica answers from a live node
                break
            time.sleep(1)
        time.sleep(5)  # traffic after recovery
        stop.set()
        thread.join()
        facts["recovered_after_s"] = recovered
        after = replicas(url)
        facts["replicas_after"] = len(after)
        facts["replica_nodes_after"] = sorted(set(after.values()))
        facts["requests_before_removal"] = sum(1 for t, _ in statuses if t < removed_at)
        facts["failed_before_removal"] = sum(1 for t, c in statuses if t < removed_at and c != 200)
        tail = [c for t, c in statuses if recovered is not None and t > removed_at + recovered]
        facts["requests_after_recovery"] = len(tail)
        facts["failed_after_recovery"] = sum(1 for c in tail if c != 200)
        facts["failed_during_recovery"] = sum(1 for t, c in statuses if c != 200 and t >= removed_at)
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    print(json.dumps(facts))


def _running_replicas() -> int:
    status = serve.status().applications["lakeloop"].deployments["ModelServer"]
    return status.replica_states.get("RUNNING", 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
