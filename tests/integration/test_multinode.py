"""Multi-node on one host: training, batch inference and Serve spread over a real three-node Ray
cluster, and the endpoint survives losing a node. Runs in its own process and cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_work_spreads_over_nodes_and_serving_survives_losing_one(tmp_path: Path, mlflow_server: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.integration.multinode_scenario", str(tmp_path / "data"), mlflow_server],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    all_nodes = {facts["nodes"]["head"], *facts["nodes"]["workers"]}
    assert len(set(facts["train_nodes"])) == 2 and set(facts["train_nodes"]) <= all_nodes  # one Train worker per node
    assert facts["scored_rows"] == 3000 and facts["batch_nodes_used"] >= 2
    assert len(facts["replica_nodes_before"]) == 2  # the two replicas on different nodes
    assert set(facts["replica_nodes_before"]) <= set(facts["nodes"]["workers"])
    assert facts["failed_before_removal"] == 0 and facts["requests_before_removal"] > 0
    assert facts["recovered_after_s"] is not None, "replicas were not rescheduled off the removed node"
    assert facts["removed"] not in facts["replica_nodes_after"] and facts["replicas_after"] == 2
    assert facts["requests_after_recovery"] > 0 and facts["failed_after_recovery"] == 0
