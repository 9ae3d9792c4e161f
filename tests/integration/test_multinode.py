"""Multi-node on one host, on shared storage: training and Serve spread over a real three-node Ray
cluster with every table on a real S3-protocol server (batch inference writes its output there) and
MLflow on PostgreSQL (its artifacts on the same store); feature tables are joined over the nodes and
looked up from Redis by replicas on two nodes; the loop closes there (drift, retraining
through the Jobs API), and the endpoint survives losing a node. Runs in its own process and cluster."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import run_scenario

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_loop_on_shared_storage_spreads_over_nodes_and_serving_survives_losing_one(
    object_store, mlflow_at_scale: str, redis_url: str
) -> None:
    root = object_store.uri(f"lakeloop-{uuid.uuid4().hex[:8]}")
    bin_dir = str(Path(sys.executable).parent)  # the retraining job's `python` is this interpreter
    env = {**object_store.env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    facts = run_scenario(
        "tests.integration.multinode_scenario", root, mlflow_at_scale, redis_url, timeout=1200, env=env
    )
    all_nodes = {facts["nodes"]["head"], *facts["nodes"]["workers"]}
    assert len(set(facts["train_nodes"])) == 2 and set(facts["train_nodes"]) <= all_nodes  # one Train worker per node
    # 3,000 rows are within batch_inference.inline_rows: the driver scores them, so the spread over
    # nodes is Train's and Serve's to show
    assert facts["scored_rows"] == 3000
    assert facts["scored_rows_on_store"] == 3000  # batch inference wrote its table to the store
    assert f"{root}/events version 0" in facts["lineage"] and facts["artifact_uri"].startswith("mlflow-artifacts:")
    assert facts["logged_on_store"] >= 600 and facts["feedback_on_store"] == 20
    assert facts["monitor_drifted_windows"] >= 2 and facts["retraining_submitted"]
    features = facts["features"]
    assert features["built_rows"] == 1200 and features["online_entities"] == [300, 300]
    assert features["logged_rows"] == features["answered_rows"] == 300 and features["lookup_mismatches"] == 0
    assert set(features["replica_nodes"]) == set(facts["nodes"]["workers"])  # both replicas looked up
    assert len(facts["replica_nodes_before"]) == 2  # the two replicas on different nodes
    assert set(facts["replica_nodes_before"]) <= set(facts["nodes"]["workers"])
    assert facts["failed_before_removal"] == 0 and facts["requests_before_removal"] > 0
    assert facts["recovered_after_s"] is not None, "replicas were not rescheduled off the removed node"
    assert facts["removed"] not in facts["replica_nodes_after"] and facts["replicas_after"] == 2
    assert facts["requests_after_recovery"] > 0 and facts["failed_after_recovery"] == 0
