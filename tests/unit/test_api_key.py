"""The Serve app's API-key check, on the real FastAPI app the deployment uses (no cluster)."""

from __future__ import annotations

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from pipelines.adapters.ray_serve import API_KEY_ENV, api_key_digest, api_key_from_env
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from serve.app import create_api


@pytest.fixture
def client(config: LakeloopConfig) -> TestClient:
    api = create_api(config, api_key_digest("s3cret-key"))
    calls = []

    @api.post("/predict")
    async def predict() -> dict:
        calls.append(1)
        return {"ok": True}

    @api.get("/health")
    async def health() -> dict:
        return {"status": "ready"}

    client = TestClient(api)
    client.calls = calls  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic s3cret-key", "s3cret-key", "Bearer "])
def test_without_the_key_it_is_401_and_nothing_runs(client: TestClient, header: str | None) -> None:
    headers = {"authorization": header} if header is not None else {}
    response = client.post("/predict", json={}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "s3cret" not in response.text
    assert client.calls == []


def test_with_the_key_it_answers_and_health_stays_open(client: TestClient) -> None:
    assert client.post("/predict", json={}, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
    assert client.calls == [1]
    assert client.get("/health").status_code == 200


def test_an_unauthenticated_non_json_post_is_401_not_415(client: TestClient) -> None:
    assert client.post("/predict", content=b"x", headers={"content-type": "text/plain"}).status_code == 401


def test_no_key_configured_means_open(config: LakeloopConfig) -> None:
    api = create_api(config, None)

    @api.post("/predict")
    async def predict() -> dict:
        return {"ok": True}

    assert TestClient(api).post("/predict", json={}).status_code == 200


@pytest.mark.parametrize("value", ["", "  "])
def test_a_key_set_but_empty_is_refused_never_an_open_api(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(API_KEY_ENV, value)
    with pytest.raises(LakeloopError, match="LAKELOOP_API_KEY is set but empty"):
        api_key_from_env()


def test_an_unset_key_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert api_key_from_env() is None


def test_every_answer_carries_its_request_id_and_refusals_are_counted(config: LakeloopConfig) -> None:
    api = create_api(config, api_key_digest("s3cret-key"))
    refused: list[tuple[int, str]] = []
    api.state.metrics = type("Recorder", (), {"refusal": lambda self, status, route: refused.append((status, route))})()

    @api.post("/predict")
    async def predict(request: Request) -> dict:
        return {"request_id": request.state.request_id}

    client, key = TestClient(api), {"Authorization": "Bearer s3cret-key"}
    answers = [
        client.post("/predict", json={}, headers=key),
        client.post("/predict", json={}),  # 401
        client.post("/predict", content=b"x", headers={**key, "content-type": "text/plain"}),  # 415
        client.get("/nowhere", headers=key),  # 404
    ]
    ids = [a.headers["x-lakeloop-request-id"] for a in answers]
    assert len(set(ids)) == 4 and answers[0].json()["request_id"] == ids[0]
    assert [a.status_code for a in answers] == [200, 401, 415, 404]
    assert refused == [(401, "/predict"), (415, "/predict"), (404, "other")]
