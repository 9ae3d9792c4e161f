"""`lakeloop release` as a CI job runs it: `ray job submit --working-dir <a checkout>` against a running
`lakeloop stack up` (MLflow, the Ray head, Serve from `lakeloop serve`), on real Delta tables. The
champion is trained at "commit A"; copies of the checkout change a hyperparameter in conf/ or break
their own serving code. A release trains on the champion's exact table versions (rows landed since
are not read), passes the gate and the smoke stage (its own Serve app running the release's code,
golden rows, schemathesis) and is promoted; a change whose serving code fails never reaches
@champion and its smoke app is removed; a rerun is a no-op; a degrading change is refused with the
gate's reason and stays refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from mlflow import MlflowClient

from pipelines.adapters import delta
from pipelines.adapters.local_services import STATE_FILE, StackState, free_port, ray_auth_headers
from pipelines.adapters.registry import FINGERPRINT_TAG, TRIGGER_KIND_TAG, TRIGGER_TAG, Registry
from pipelines.core.config import parse_config
from pipelines.training.smoke_stage import SMOKE_ALIAS, SMOKE_TABLES
from tests.helpers import ROOT, demo_raw_config, lakeloop, user_environment, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_cluster]

WEAK = {"max_rounds": 3, "max_leaves": 4}  # commit A's settings: the champion
STRONG = {"max_rounds": 300, "max_leaves": 15}  # a change that learns more
DEGRADED = {"max_rounds": 1, "max_leaves": 2}  # a change that learns less
INVOCATIONS = "request_id, _, rows = await _server(api).score(mlflow_records(await _json_body(request)), request)"


def _raw(home: Path, params: dict) -> dict:
    raw = demo_raw_config(home / "data")
    raw["mlflow"]["registered_model"] = "release-test"
    raw["train"]["families"] = {"xgboost": {"params": params}}
    return raw


def _checkout(home: Path, raw: dict, label: str, break_serving: bool = False) -> Path:
    """A copy of this checkout (no .git) whose conf/lakeloop.yaml is `raw`; `break_serving`: its
    /invocations fails (a change that trains well and serves badly)."""
    copy = home / f"checkout-{label}"
    for part in ("pipelines", "serve", "conf"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "constraints.txt", copy / "constraints.txt")
    (copy / "conf" / "lakeloop.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if break_serving:
        app = copy / "serve" / "app.py"
        assert INVOCATIONS in app.read_text()
        app.write_text(app.read_text().replace(INVOCATIONS, 'raise RuntimeError("broken by this release")'))
    return copy


class Stack:
    def __init__(self, home: Path, env: dict) -> None:
        self.home, self.env = home, env
        self.state = StackState.read(Path(env["LAKELOOP_STORAGE_ROOT"]) / STATE_FILE)
        self.config = parse_config(_raw(home, WEAK))
        self.registry = Registry.connect(self.state.mlflow_url, "release-test")
        self.client = MlflowClient(self.state.mlflow_url)

    def release(self, checkout: Path) -> tuple[str, int, str]:
        """`ray job submit` of the release, as the CI template runs it: (submission id, exit code, output)."""
        submission = f"release-{uuid.uuid4().hex[:8]}"
        done = subprocess.run(
            ["ray", "job", "submit", "--address", self.state.dashboard_url, "--submission-id", submission]
            + ["--working-dir", str(checkout), "--", "python", "-m", "pipelines.release"]
            + ["--submission-id", submission],
            cwd=checkout,
            env={
                **self.env,
                "RAY_AUTH_MODE": "token",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}",
            },
            capture_output=True,
            text=True,
            timeout=900,
        )
        return submission, done.returncode, done.stdout + done.stderr

    def version_count(self) -> int:
        return len(self.client.search_model_versions("name = 'release-test'"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("release")
    env = user_environment(_raw(home, WEAK), home)
    up = lakeloop("stack", "up", "--mlflow-port", str(free_port()), "--dashboard-port", str(free_port()), env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        assert lakeloop("data", "generate", "--rows", "3000", "--seed", "5", env=env).returncode == 0
        trained = lakeloop("train", env=env)
        assert trained.returncode == 0, trained.stderr[-3000:]
        # rows landed after the champion was trained: a release must not read them
        assert lakeloop("data", "generate", "--rows", "500", "--seed", "6", env=env).returncode == 0
        served = lakeloop("serve", env=env)
        assert served.returncode == 0, served.stderr[-3000:]
        yield Stack(home, env)
    finally:
        down = lakeloop("stack", "down", env=env)
        assert down.returncode == 0, down.stderr[-3000:]


def _serve_apps(dashboard: str) -> set[str]:
    """The applications Serve runs, from its REST API with the stack's token (over plain HTTP: Ray's
    own client caches the auth mode of the first cluster this process talked to)."""
    answer = httpx.get(f"{dashboard}/api/serve/applications/", headers=ray_auth_headers(), timeout=30)
    answer.raise_for_status()
    return set(answer.json().get("applications") or {})


def test_a_code_change_is_retrained_on_the_champions_tables_gated_smoked_and_released_once(stack: Stack) -> None:
    registry, home = stack.registry, stack.home
    first = registry.champion()
    champion_tables = registry.run_tables(first.run_id)
    assert len(champion_tables) == 1 and champion_tables[0][1] == 0  # the first table version
    url = "http://127.0.0.1:8000"

    strong = _raw(home, STRONG)
    # better, but its own code cannot serve: the smoke stage (running the release's code) refuses it
    _, code, output = stack.release(_checkout(home, strong, "broken", break_serving=True))
    assert code == 1 and "smoke: golden rows answered 500" in output, output[-3000:]
    assert registry.champion().version == first.version
    assert _serve_apps(stack.state.dashboard_url) == {"lakeloop"}  # the smoke app is gone
    assert registry.version_by_alias(SMOKE_ALIAS) is None

    submission, code, output = stack.release(_checkout(home, strong, "strong"))
    assert code == 0, output[-3000:]
    released = registry.champion()
    assert released.version not in (first.version,), output[-2000:]
    assert released.tags[TRIGGER_KIND_TAG] == "release" and released.tags[TRIGGER_TAG] == submission
    assert released.tags[FINGERPRINT_TAG] != first.tags[FINGERPRINT_TAG]
    assert registry.run_tables(released.run_id) == champion_tables  # exactly the champion's versions
    assert "conf train.families.xgboost.params.max_rounds: 3 -> 300" in output
    # the smoke app logged to its own tables and is gone; the endpoint swapped to the release
    smoke_log = delta.tables(stack.config).source(SMOKE_TABLES["predictions_table"])
    assert wait_for(lambda: smoke_log.open().to_pyarrow_table().num_rows >= 20, 60, every=1, ignore=(Exception,))
    assert _serve_apps(stack.state.dashboard_url) == {"lakeloop"}  # the smoke app is gone
    assert registry.version_by_alias(SMOKE_ALIAS) is None
    assert wait_for(lambda: httpx.get(f"{url}/model").json()["version"] == released.version, 60)
    listed = lakeloop("model", "list", env=stack.env)
    assert released.tags[FINGERPRINT_TAG] in listed.stdout and "release" in listed.stdout

    _, code, output = stack.release(_checkout(home, strong, "strong-again"))
    assert code == 0 and "nothing to release" in output, output[-2000:]
    assert registry.champion().version == released.version
    assert stack.version_count() == 3

    degraded = _raw(home, DEGRADED)
    _, code, output = stack.release(_checkout(home, degraded, "degraded"))
    assert code == 1, output[-2000:]  # refused
    refused = max(
        stack.client.search_model_versions(f"name = 'release-test' and tags.`{TRIGGER_KIND_TAG}` = 'release'"),
        key=lambda mv: int(mv.version),
    )
    assert refused.tags["lakeloop.gate"] == "refused"
    assert "not released" in output and refused.tags["lakeloop.gate_reason"] in output
    assert registry.champion().version == released.version

    _, code, output = stack.release(_checkout(home, degraded, "degraded-again"))
    assert code == 0 and "was released before" in output, output[-2000:]
    assert stack.version_count() == 4
