"""`lakeloop release` as a CI job runs it: `ray job submit --working-dir <a checkout>` on the shared
cluster, with a real MLflow server, Delta tables and Serve. The champion is trained at "commit A";
copies of the checkout change a hyperparameter in conf/. A release trains on the champion's exact
table versions (rows landed since are not read), passes the gate and the smoke stage (its own Serve
app, golden rows, schemathesis) and is promoted; a rerun is a no-op; a degrading change is refused
with the gate's reason and stays refused."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient
from ray.job_submission import JobStatus, JobSubmissionClient

from pipelines.adapters import delta, ray_serve
from pipelines.adapters.local_services import free_port
from pipelines.adapters.registry import FINGERPRINT_TAG, TRIGGER_KIND_TAG, TRIGGER_TAG, Registry
from pipelines.core.config import parse_config
from pipelines.scenarios import endpoint, synthetic
from pipelines.training.smoke_stage import SMOKE_ALIAS, SMOKE_APP, SMOKE_TABLES
from pipelines.training.workflow import train_and_register
from tests.helpers import demo_raw_config, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
WEAK = {"max_rounds": 3, "max_leaves": 4}  # commit A's settings: the champion
STRONG = {"max_rounds": 300, "max_leaves": 15}  # a change that learns more
DEGRADED = {"max_rounds": 1, "max_leaves": 2}  # a change that learns less


def _raw(home: Path, mlflow_server: str, name: str, params: dict) -> dict:
    raw = demo_raw_config(home / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=name)
    raw["train"]["families"] = {"xgboost": {"params": params}}
    return raw


def _checkout(home: Path, raw: dict, label: str) -> Path:
    """A copy of this checkout (no .git) whose conf/lakeloop.yaml is `raw`."""
    copy = home / f"checkout-{label}"
    for part in ("pipelines", "serve", "conf"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "constraints.txt", copy / "constraints.txt")
    (copy / "conf" / "lakeloop.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return copy


def _release(dashboard: str, checkout: Path, raw: dict) -> tuple[str, str, str]:
    """Submit the release as CI would; (submission id, final status, logs)."""
    jobs = JobSubmissionClient(dashboard)
    submission = f"release-{uuid.uuid4().hex[:8]}"
    env = {
        "MLFLOW_TRACKING_URI": raw["mlflow"]["tracking_uri"],
        "LAKELOOP_STORAGE_ROOT": raw["storage"]["root"],
        "RAY_API_SERVER_ADDRESS": dashboard,
    }
    jobs.submit_job(
        entrypoint=f"{sys.executable} -m pipelines.release --submission-id {submission}",  # the venv's python
        submission_id=submission,
        runtime_env={"working_dir": str(checkout), "env_vars": env, "excludes": ["__pycache__"]},
    )
    assert wait_for(lambda: jobs.get_job_status(submission).is_terminal(), 600, every=1)
    return submission, jobs.get_job_status(submission), jobs.get_job_logs(submission)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: str):
    home = tmp_path_factory.mktemp("release")
    name = f"release-{uuid.uuid4().hex[:6]}"
    config = parse_config(_raw(home, mlflow_server, name, WEAK))
    delta.tables(config).events.append(synthetic.generate(3000, 5))
    first = train_and_register(config)
    assert first.promoted, first.reason
    delta.tables(config).events.append(synthetic.generate(500, 6))  # landed after: a release must not read it
    url = endpoint.deploy(config, ray_local, free_port())
    assert ray_serve.wait_ready(url, 120)
    try:
        yield home, config, first, url
    finally:
        ray_serve.shutdown(ray_local)


def test_a_code_change_is_retrained_on_the_champions_tables_gated_smoked_and_released_once(
    stack, ray_local: str, mlflow_server: str
) -> None:
    home, config, first, url = stack
    registry = Registry.from_config(config)
    client = MlflowClient(mlflow_server)
    name = config.mlflow.registered_model
    champion_tables = registry.run_tables(first.run_id)

    strong = _raw(home, mlflow_server, name, STRONG)
    submission, status, logs = _release(ray_local, _checkout(home, strong, "strong"), strong)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    released = registry.champion()
    assert released.version != first.model_version, logs[-2000:]
    assert released.tags[TRIGGER_KIND_TAG] == "release" and released.tags[TRIGGER_TAG] == submission
    assert released.tags[FINGERPRINT_TAG] != client.get_model_version(name, first.model_version).tags[FINGERPRINT_TAG]
    assert registry.run_tables(released.run_id) == champion_tables  # exactly the champion's versions
    assert "conf train.families.xgboost.params.max_rounds: 3 -> 300" in logs
    # the smoke app served the candidate, logged to its own tables, and is gone
    smoke_log = delta.tables(config).source(SMOKE_TABLES["predictions_table"])
    assert wait_for(lambda: smoke_log.open().to_pyarrow_table().num_rows >= 20, 60, every=1, ignore=(Exception,))
    assert ray_serve.application_status(ray_local, SMOKE_APP) is None
    assert registry.version_by_alias(SMOKE_ALIAS) is None
    assert wait_for(lambda: httpx.get(f"{url}/model").json()["version"] == released.version, 60)

    _, status, logs = _release(ray_local, _checkout(home, strong, "strong-again"), strong)
    assert status == JobStatus.SUCCEEDED and "nothing to release" in logs, logs[-2000:]
    assert registry.champion().version == released.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 2

    degraded = _raw(home, mlflow_server, name, DEGRADED)
    _, status, logs = _release(ray_local, _checkout(home, degraded, "degraded"), degraded)
    assert status == JobStatus.FAILED, logs[-2000:]  # exit 1: refused
    refused = client.search_model_versions(f"name = '{name}' and tags.`{TRIGGER_KIND_TAG}` = 'release'")
    refused = max(refused, key=lambda mv: int(mv.version))
    assert refused.tags["lakeloop.gate"] == "refused"
    assert "not released" in logs and refused.tags["lakeloop.gate_reason"] in logs
    assert registry.champion().version == released.version

    _, status, logs = _release(ray_local, _checkout(home, degraded, "degraded-again"), degraded)
    assert status == JobStatus.SUCCEEDED and "was released before" in logs, logs[-2000:]
    assert len(client.search_model_versions(f"name = '{name}'")) == 3
