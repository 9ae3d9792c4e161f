"""The README's main job, end to end, as a user runs it (slow; runs in CI)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT, demo_raw_config, write_config

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.own_cluster]


def test_demo_closes_the_loop_with_no_failed_request(tmp_path: Path) -> None:
    raw = demo_raw_config(tmp_path / "data")
    raw["train"].update(max_epochs=4)
    conf = write_config(raw, tmp_path / "lakeloop.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "demo", "--rows", "4000", "--json", "--config", str(conf)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)
    print({stage["stage"]: stage["seconds"] for stage in summary["stages"]})  # shown with -rP
    assert summary["first_promoted"] is True and summary["first_version"] == "1"
    assert len(summary["calm_drift"]) == 3 and summary["calm_drift"].count(True) <= 1  # no trigger
    assert len(summary["shifted_drift"]) == 3 and summary["shifted_drift"].count(True) >= 2
    assert summary["submission_id"].startswith("lakeloop-retrain-")
    retrained = summary["retrained"]
    assert retrained["version"] == "2" and retrained["outcome"] in ("promoted", "refused")
    if retrained["outcome"] == "promoted":
        assert summary["swapped"] and summary["serving_version"] == "2"
    assert summary["failed_requests"] == 0
    assert summary["served_rows"] >= 2 * 3 * 500  # two phases of three windows, plus traffic during the swap
    assert summary["logged_rows"] == summary["served_rows"]
    # a console that tells a story: a line as each stage starts and ends; Ray's, Tune's and the jobs'
    # output is in the log file it names
    console = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(console) <= 100, [line for line in console[1:] if not line.startswith("[")][:20]  # not the story
    last_stage = summary["stages"][-1]["stage"]
    assert console[-1].startswith(f"[{last_stage}]"), console[-5:]  # nothing follows the story's end
    assert sum(line.startswith("[") for line in console) >= 2 * len(summary["stages"])
    assert Path(summary["log"]).stat().st_size > 0 and summary["log"] in done.stderr
