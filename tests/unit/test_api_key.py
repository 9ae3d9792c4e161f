"""The Serve app's front door (API key, request ids, content type, refusal counts) on the real API and
the real replica class, with an injected model source and no cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from pipelines.adapters.ray_serve import API_KEY_ENV, api_key_digest, api_key_from_env
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.scenarios.synthetic import EXAMPLE_ROW
from serve.app import create_api
from tests.fakes import FakeSource, UnbatchedServer

KEY = {"Authorization": "Bearer s3cret-key"}
BODY = {"records": [EXAMPLE_ROW]}


@pytest.fixture
def server(config: LakeloopConfig) -> Iterator[UnbatchedServer]:
    replica = UnbatchedServer(config.model_dump_json(), FakeSource())
    yield replica
    replica.close()


def _client(config: LakeloopConfig, server: UnbatchedServer, key: str | None) -> TestClient:
    api = create_api(config, api_key_digest(key))
    api.state.server, api.state.metrics = server, server.metrics
    return TestClient(api)


@pytest.fixture
def client(config: LakeloopConfig, server: UnbatchedServer) -> TestClient:
    return _client(config, server, "s3cret-key")


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret-key", "s3cret-key", "Bearer "])
def test_without_the_key_it_is_401_and_nothing_is_scored_or_logged(
    client: TestClient, server: UnbatchedServer, header: str | None
) -> None:
    headers = {"authorization": header} if header is not None else {}
    response = client.post("/predict", json=BODY, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "s3cret" not in response.text
    assert server.predictions.snapshot()["accepted"] == 0


def test_with_the_key_it_answers_and_logs_and_health_stays_open(client: TestClient, server: UnbatchedServer) -> None:
    answer = client.post("/predict", json=BODY, headers=KEY)
    assert answer.status_code == 200 and answer.json()["predictions"][0]["prediction"] == "1"
    assert server.predictions.snapshot()["accepted"] == 1
    assert client.get("/health").status_code == 200


def test_an_unauthenticated_non_json_post_is_401_not_415(client: TestClient) -> None:
    assert client.post("/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 401


def test_no_key_configured_means_open(config: LakeloopConfig, server: UnbatchedServer) -> None:
    assert _client(config, server, None).post("/predict", json=BODY).status_code == 200


@pytest.mark.parametrize("value", ["", "  "])
def test_a_key_set_but_empty_is_refused_never_an_open_api(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(API_KEY_ENV, value)
    with pytest.raises(LakeloopError, match="LAKELOOP_API_KEY is set but empty"):
        api_key_from_env()


def test_an_unset_key_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert api_key_from_env() is None


def test_every_answer_carries_its_request_id_and_refusals_are_counted(
    config: LakeloopConfig, server: UnbatchedServer
) -> None:
    refused: list[tuple[int, str]] = []
    server.metrics.refusal = lambda status, route: refused.append((status, route))  # type: ignore[method-assign]
    client = _client(config, server, "s3cret-key")
    answers = [
        client.post("/predict", json=BODY, headers=KEY),
        client.post("/predict", json=BODY),  # 401
        client.post("/predict", content=b"x", headers={**KEY, "content-type": "text/plain"}),  # 415
        client.get("/nowhere", headers=KEY),  # 404
    ]
    ids = [a.headers["x-lakeloop-request-id"] for a in answers]
    assert len(set(ids)) == 4 and answers[0].json()["request_id"] == ids[0]
    assert [a.status_code for a in answers] == [200, 401, 415, 404]
    assert refused == [(401, "/predict"), (415, "/predict"), (404, "other")]


def test_health_is_a_status_only_and_model_tells_whether_a_key_is_required(
    config: LakeloopConfig, server: UnbatchedServer
) -> None:
    open_api = _client(config, server, None)
    assert open_api.get("/health").json() == {"status": "ready", "version": "1"}
    assert open_api.get("/model").json()["api_key_required"] is False
    assert _client(config, server, "k").get("/model", headers={"Authorization": "Bearer k"}).json()["api_key_required"]


def test_a_replica_that_cannot_log_is_unready_and_answers_503_not_500(
    config: LakeloopConfig, server: UnbatchedServer
) -> None:
    """The spool's directory disappears (an OSError in the flush path): requests get 503 with
    Retry-After, /health takes the replica out of rotation, and GET /model says why."""
    import shutil

    client = _client(config, server, None)
    assert client.post("/predict", json=BODY).status_code == 200
    shutil.rmtree(server.predictions.directory)
    server.predictions.flush()
    refused = client.post("/predict", json=BODY)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "30"
    assert client.get("/health").status_code == 503 and client.get("/health").json() == {"status": "cannot log"}
    described = client.get("/model").json()
    assert described["health"] == "degraded" and "cannot log" in described["health_reason"]
    server.predictions.directory.mkdir(parents=True)
    assert client.post("/predict", json=BODY).status_code == 200  # the spool recovers with its directory
    assert client.get("/health").status_code == 200
