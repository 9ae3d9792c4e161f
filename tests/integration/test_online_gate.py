"""The online gate on a real Serve endpoint, MLflow server and Delta logs: a candidate set with
`lakeloop model shadow|canary` is scored beside the champion on labelled traffic sent through
/predict and /feedback, and the monitor's online step promotes the better one and retires the worse
one on the paired evidence, through the registry's compare-and-set."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from mlflow import MlflowClient

from pipelines import model as model_step
from pipelines.adapters import delta
from pipelines.adapters.local_services import free_port
from pipelines.adapters.prediction_log import MODEL_VERSION
from pipelines.adapters.registry import ONLINE_TAG, ChampionState, Registry
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.monitoring.champion import champion_info
from pipelines.monitoring.loop_status import describe, gather
from pipelines.monitoring.online_gate import online_step
from pipelines.scenarios import endpoint as shipped_endpoint
from pipelines.scenarios import synthetic
from pipelines.scenarios.traffic import LabelledStream
from pipelines.training.workflow import train_and_register
from tests import helpers
from tests.constant_model import Broken, register_constant
from tests.helpers import demo_raw_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: None) -> LakeloopConfig:
    """Version 1: a trained champion; version 2: a constant model (no better than chance)."""
    raw = demo_raw_config(tmp_path_factory.mktemp("online") / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"online-{uuid.uuid4().hex[:8]}")
    raw["train"].update(max_epochs=2)
    raw["serving"].update(poll_interval_s=0.5)
    raw["serving"]["prediction_log"].update(flush_rows=50, flush_interval_s=0.5)
    raw["gate"]["online"] = {
        "mode": "shadow",
        "min_pairs": 100,
        "looks": 3,
        "bootstrap_rounds": 200,
        "load_timeout_s": 1,
    }
    config = parse_config(raw)
    delta.tables(config).events.append(synthetic.generate(2000, 3))
    assert train_and_register(config).promoted
    assert register_constant(mlflow_server, config.mlflow.registered_model) == "2"
    return config


@pytest.fixture(scope="module")
def endpoint(models: LakeloopConfig, ray_local: str) -> Iterator[str]:
    with shipped_endpoint.serving(models, ray_local, free_port()) as url:
        yield url


def _candidate_on(url: str, version: str | None) -> bool:
    candidate = httpx.get(f"{url}/model", timeout=5).json().get("candidate")
    return (candidate or {}).get("version") == version


def _labelled_traffic(config: LakeloopConfig, url: str, rows: int, seed: int) -> list:
    frame = synthetic.generate(rows, seed).to_pandas()
    stream = LabelledStream(url, config.dataset.feature_names, config.dataset.label)
    served = stream.send(frame)
    assert stream.failed == 0 and len(served) == rows  # no client request failed while a candidate was on
    return served


def _shadow_rows(config: LakeloopConfig, version: str) -> int:
    table = delta.tables(config).shadow.read([MODEL_VERSION])
    return 0 if table is None else table.column(MODEL_VERSION).to_pylist().count(version)


def _landed(config: LakeloopConfig, rows: int) -> bool:
    """The served rows, their labels and the other model's rows all committed (each log commits on
    its own: pairs are made only of rows in all three)."""
    tables = delta.tables(config)
    return all(table.count() >= rows for table in (tables.predictions, tables.feedback, tables.shadow))


def _nominate(config: LakeloopConfig, action: str, version: str, percent: float | None = None) -> None:
    model_step.run(argparse.Namespace(action=action, version=version, percent=percent), config)


def test_in_shadow_a_worse_candidate_is_retired_and_the_champion_answered_every_request(
    models: LakeloopConfig, endpoint: str
) -> None:
    _nominate(models, "shadow", "2")
    assert helpers.wait_for(lambda: _candidate_on(endpoint, "2"), 60, ignore=(httpx.TransportError,))
    served = _labelled_traffic(models, endpoint, 150, seed=21)
    assert {row.version for row in served} == {"1"}  # in shadow the champion answers every request
    assert helpers.wait_for(lambda: _shadow_rows(models, "2") >= 150, 30)
    assert helpers.wait_for(lambda: _landed(models, 150), 30)
    step = online_step(models, champion_info(models))
    assert step is not None and step.action == "retire", step
    assert step.pairs == 150 and step.p_worse < 0.05 / 3 and step.candidate < step.champion
    registry = Registry.from_config(models)
    assert registry.version_by_alias(models.gate.online.alias) is None
    assert registry.state().version == "1"
    assert (
        MlflowClient(models.mlflow.tracking_uri).get_model_version(models.mlflow.registered_model, "2").tags[ONLINE_TAG]
        == "retired"
    )
    assert helpers.wait_for(lambda: _candidate_on(endpoint, None), 30, ignore=(httpx.TransportError,))


def test_a_better_canary_is_promoted_and_every_logged_row_says_which_model_answered(
    models: LakeloopConfig, endpoint: str
) -> None:
    registry = Registry.from_config(models)
    assert registry.replace_champion("2", registry.state()) is None  # the constant model is the champion now
    assert helpers.wait_for(lambda: httpx.get(f"{endpoint}/model").json()["version"] == "2", 60)
    _nominate(models, "canary", "1", percent=50)
    assert helpers.wait_for(lambda: _candidate_on(endpoint, "1"), 60, ignore=(httpx.TransportError,))
    served = _labelled_traffic(models, endpoint, 200, seed=22)
    answered = {row.request_id: row.version for row in served}
    assert set(answered.values()) == {"1", "2"}  # both answer a share of the requests
    assert helpers.wait_for(lambda: _landed(models, 350), 30)  # 150 before this test
    logged = delta.tables(models).predictions.read(["request_id", MODEL_VERSION]).to_pylist()
    assert all(answered[r["request_id"]] == r[MODEL_VERSION] for r in logged if r["request_id"] in answered)
    epoch = registry.state().epoch
    with ThreadPoolExecutor(2) as pool:  # two monitors deciding at once
        steps = list(pool.map(lambda _: online_step(models, champion_info(models)), range(2)))
    assert [s.applied for s in steps].count(True) == 1, steps  # promoted once (the other found it moved, or
    step = next(s for s in steps if s.applied)  # read the alias after the promotion and saw the guard)
    assert step.action == "promote"
    assert step.p_better < 0.05 / 3 and step.candidate > step.champion
    assert registry.state() == ChampionState("1", epoch + 1)
    events = delta.tables(models).attempts.read().to_pylist()
    assert [e["candidate_version"] for e in events if e["event"] == "online_promoted"] == ["1"]
    guard = registry.version_by_alias(models.gate.online.alias)  # the replaced champion stays in shadow
    assert guard.version == "2" and guard.tags[ONLINE_TAG] == "guard"
    again = online_step(models, champion_info(models))  # a second monitor: the candidate is decided, the guard waits
    assert again is not None and (again.mode, again.action, again.pairs) == ("guard", "wait", 0)
    assert helpers.wait_for(lambda: httpx.get(f"{endpoint}/model").json()["version"] == "1", 60)
    status = gather(models, helpers.ROOT / "conf" / "serve.yaml")
    assert status["online"]["candidate"]["role"] == "guard"
    assert status["online"]["last_decision"]["event"] == "online_promoted"
    assert "@candidate: version 2 (guard, shadow)" in describe(status)


def test_a_promotion_that_is_worse_live_is_rolled_back_by_its_guard(models: LakeloopConfig, endpoint: str) -> None:
    """A promotion as the workflow makes it with the online gate on (the compare-and-set, then the
    replaced champion as the guard in shadow), of a model that is worse live."""
    registry = Registry.from_config(models)
    replaced = registry.state()
    assert replaced.version == "1" and registry.replace_champion("2", replaced) is None
    registry.guard(models.gate.online.alias, "1", "replaced by version 2")
    assert helpers.wait_for(lambda: _candidate_on(endpoint, "1"), 60, ignore=(httpx.TransportError,))
    assert httpx.get(f"{endpoint}/model").json()["candidate"]["role"] == "guard"
    before = delta.tables(models).shadow.count()
    served = _labelled_traffic(models, endpoint, 150, seed=23)
    assert {row.version for row in served} == {"2"}
    assert before == 350 and helpers.wait_for(lambda: _landed(models, 500), 30)
    step = online_step(models, champion_info(models))
    assert step is not None and (step.mode, step.action) == ("guard", "rollback"), step
    assert registry.state().version == "1" and registry.version_by_alias(models.gate.online.alias) is None
    events = delta.tables(models).attempts.read().to_pylist()
    assert [(e["champion_version"], e["candidate_version"]) for e in events if e["event"] == "rolled_back"] == [
        ("2", "1")
    ]
    assert helpers.wait_for(lambda: httpx.get(f"{endpoint}/model").json()["version"] == "1", 60)
    shown = describe(gather(models, helpers.ROOT / "conf" / "serve.yaml"))
    assert "last: rolled_back version 1" in shown and "guard of the promotion of version 2" in shown


def test_a_candidate_that_raises_fails_no_request_is_reported_and_retired(
    models: LakeloopConfig, endpoint: str
) -> None:
    version = register_constant(models.mlflow.tracking_uri, models.mlflow.registered_model, Broken())
    _nominate(models, "shadow", version)

    def reported() -> bool:
        candidate = httpx.get(f"{endpoint}/model", timeout=5).json().get("candidate") or {}
        return "cannot score anything" in (candidate.get("last_error") or "")

    assert helpers.wait_for(reported, 60, ignore=(httpx.TransportError,))  # it never loads: warm-up fails
    served_before = delta.tables(models).predictions.count()
    _labelled_traffic(models, endpoint, 200, seed=24)  # asserts no request failed
    assert helpers.wait_for(lambda: delta.tables(models).predictions.count() >= served_before + 200, 30)
    step = online_step(models, champion_info(models))
    assert step is not None and step.action == "retire" and step.applied, step
    assert "no replica scored it" in step.reason
    assert Registry.from_config(models).version_by_alias(models.gate.online.alias) is None
