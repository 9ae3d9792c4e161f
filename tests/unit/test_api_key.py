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
from serve.access import Access
from serve.app import create_api
from tests.fakes import FakeSource, UnbatchedServer

KEY = {"Authorization": "Bearer s3cret-key"}
BODY = {"records": [EXAMPLE_ROW]}


@pytest.fixture
def server(config: LakeloopConfig) -> Iterator[UnbatchedServer]:
    replica = UnbatchedServer(config.model_dump_json(), FakeSource())
    yield replica
    replica.close()


def _client(
    config: LakeloopConfig, server: UnbatchedServer, key: str | None, feedback_key: str | None = None
) -> TestClient:
    server.access = Access.of(api_key_digest(key), api_key_digest(feedback_key), config.mlflow.registered_model)
    api = create_api(config, server.access)
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


def test_labels_are_taken_only_for_request_ids_this_endpoint_issued(
    config: LakeloopConfig, server: UnbatchedServer
) -> None:
    client = _client(config, server, "s3cret-key")
    answered = client.post("/predict", json=BODY, headers=KEY).json()["request_id"]
    label = {"request_id": answered, "row": 0, "label": 1}
    assert client.post("/feedback", json=label, headers=KEY).status_code == 202
    elsewhere = _client(config, server, "another-key")  # another deployment's ids do not verify here
    foreign = elsewhere.post("/predict", json=BODY, headers={"Authorization": "Bearer another-key"}).json()
    client = _client(config, server, "s3cret-key")
    for made_up in (
        "f" * 40,
        answered[:-1] + "0" if answered[-1] != "0" else answered[:-1] + "1",
        foreign["request_id"],
    ):
        refused = client.post("/feedback", json={**label, "request_id": made_up}, headers=KEY)
        assert refused.status_code == 422 and "request_id" in refused.json()["error"], refused.text
    assert server.feedback.snapshot()["accepted"] == 1  # only the real one


def test_a_feedback_key_labels_and_only_labels(config: LakeloopConfig, server: UnbatchedServer) -> None:
    client = _client(config, server, "s3cret-key", feedback_key="labeller")
    labeller = {"Authorization": "Bearer labeller"}
    answered = client.post("/predict", json=BODY, headers=KEY).json()["request_id"]
    label = {"request_id": answered, "row": 0, "label": 1}
    by_predictor = client.post("/feedback", json=label, headers=KEY)
    assert by_predictor.status_code == 401 and "feedback key" in by_predictor.json()["error"]
    assert client.post("/predict", json=BODY, headers=labeller).status_code == 401
    assert client.post("/feedback", json=label, headers=labeller).status_code == 202
    assert client.post("/feedback", json={**label, "label": 0, "update": True}, headers=labeller).status_code == 202
    assert server.feedback.snapshot()["accepted"] == 2


def test_a_megabyte_of_unknown_keys_gets_a_short_422_on_the_real_route(
    config: LakeloopConfig, server: UnbatchedServer
) -> None:
    record = {**EXAMPLE_ROW, **{f"k{i}": 0 for i in range(80_000)}}  # about 1 MB of JSON
    for path, body in (("/predict", {"records": [record]}), ("/invocations", {"dataframe_records": [record]})):
        refused = _client(config, server, None).post(path, json=body)
        assert refused.status_code == 422 and len(refused.content) < 1000, (path, len(refused.content))
        assert "and 79995 more" in refused.json()["error"]
    assert server.predictions.snapshot()["accepted"] == 0


def test_rows_the_model_raises_on_fail_only_their_own_request_in_a_batch(config: LakeloopConfig) -> None:
    """Three requests in one batch, the middle one holding a value the model raises on: the batch is
    scored again request by request, the middle one gets its own error, the others their answers,
    and only the answered rows are logged."""
    import asyncio

    from serve.app import Pending

    source = FakeSource()
    source.poison = "poison"
    server = UnbatchedServer(config.model_dump_json(), source)
    try:
        bodies = [[EXAMPLE_ROW] * 2, [{**EXAMPLE_ROW, "plan": "poison"}], [EXAMPLE_ROW] * 3]
        batch = [Pending(f"r{i}", server.validator.columns(rows)) for i, rows in enumerate(bodies)]
        answers = [answer for _, answer in asyncio.run(server.score_requests(batch))]
        assert [len(a) for a in (answers[0], answers[2])] == [2, 3]
        assert isinstance(answers[1], ValueError) and "poison" in str(answers[1])
        assert server.predictions.snapshot()["accepted"] == 5
        refused = _client(config, server, None).post("/predict", json={"records": bodies[1]})
        assert refused.status_code == 422 and "cannot score 'poison'" in refused.json()["error"]
    finally:
        server.close()
