"""The Redis online store (features.online.store: redis) on a real redis-server: a materialization is
looked up exactly as the embedded store gives it, a new one replaces the old only once complete (the
old version's keys expire), and a replica whose Redis is gone still answers, counting the rows it
could not look up."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from pipelines.adapters import delta
from pipelines.adapters.local_services import stop_pid
from pipelines.adapters.online_store import OLD_VERSION_GRACE_S, DeltaOnlineStore, RedisOnlineStore
from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.feature_tables.materialize import materialize
from pipelines.scenarios.feature_tables import FeatureTables, feature_tables
from serve.app import create_api
from tests.fakes import FakeSource, UnbatchedServer
from tests.helpers import customers_of, landed_feature_tables, newest_event, offline_values
from tests.servers import start_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def tables() -> FeatureTables:
    return feature_tables(240, 4, customers=60)


def _redis_config(raw: dict, tables: FeatureTables, url: str) -> LakeloopConfig:
    raw.setdefault("features", {})["online"] = {"store": "redis", "redis_url": url, "refresh_interval_s": 0.2}
    return landed_feature_tables(raw, tables)


def _client(config: LakeloopConfig, server: UnbatchedServer) -> TestClient:
    api = create_api(config, server.access)
    api.state.server, api.state.metrics = server, server.metrics
    return TestClient(api)


def test_redis_lookups_equal_the_embedded_store_and_the_offline_values(
    raw_config: dict, tables: FeatureTables, redis_url: str
) -> None:
    config = _redis_config(raw_config, tables, redis_url)
    at = newest_event(tables) - timedelta(minutes=20)
    in_redis = materialize(config, at)
    embedded = parse_config({**config.model_dump(), "features": {**config.features.model_dump(), "online": {}}})
    materialize(embedded, at)
    customers = [*customers_of(tables), "nobody"]
    keys = [(c,) for c in customers]
    expected = offline_values(config, tables, at, customers)
    numeric = set(config.dataset.numeric)
    for view, written in zip(config.features.views, in_redis, strict=True):
        from_redis = RedisOnlineStore(config).reader(view, numeric)
        from_delta = DeltaOnlineStore(embedded).reader(view, numeric)
        assert from_redis.refresh() and from_delta.refresh(), from_redis.last_error
        assert from_redis.version == written.version and written.entities == from_delta.lookup_now(keys).hit.sum()
        found = _lookup(from_redis, keys)
        assert found.hit.tolist() == from_delta.lookup_now(keys).hit.tolist()
        assert not found.hit[-1]
        for column in view.columns:
            want = expected[column].tolist()
            got = found.values[column].tolist()
            if column in numeric:
                np.testing.assert_array_equal(got, np.array(want, float), err_msg=column)
            else:
                assert got == [None if v != v else v for v in want], column


def _lookup(reader, keys):
    import asyncio

    return asyncio.run(reader.lookup(keys))


def test_a_new_materialization_switches_whole_and_the_old_keys_expire(
    raw_config: dict, tables: FeatureTables, redis_url: str
) -> None:
    raw_config["mlflow"]["registered_model"] = "switching"  # its own keys in the shared server
    config = _redis_config(raw_config, tables, redis_url)
    first = materialize(config, newest_event(tables))[0]
    second = materialize(config, newest_event(tables) + timedelta(hours=1))[0]
    assert second.version == first.version + 1
    client = redis.Redis.from_url(redis_url)
    old = list(client.scan_iter(match=f"{first.store}:{first.version}:*"))
    new = list(client.scan_iter(match=f"{second.store}:{second.version}:*"))
    assert len(old) == len(new) == first.entities
    assert {client.ttl(k) for k in old} <= set(range(1, OLD_VERSION_GRACE_S + 1))
    assert {client.ttl(k) for k in new} == {-1}  # the current version never expires


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, str]]:
    pid, url = start_redis(tmp_path)
    yield pid, url
    stop_pid(pid)


def test_a_replica_whose_redis_is_gone_answers_and_counts_the_rows_it_could_not_look_up(
    raw_config: dict, tables: FeatureTables, own_redis: tuple[int, str]
) -> None:
    pid, url = own_redis
    config = _redis_config(raw_config, tables, url)
    materialize(config, newest_event(tables))
    server = UnbatchedServer(config.model_dump_json(), FakeSource())
    client = _client(config, server)
    customer = customers_of(tables)[0]
    try:
        assert client.post("/predict", json={"records": [{"customer_id": customer}]}).status_code == 200
        stop_pid(pid)  # Redis is gone
        answer = client.post("/predict", json={"records": [{"customer_id": customer}, {"customer_id": "x"}]})
        assert answer.status_code == 200, answer.text
        lookups = client.get("/model").json()["features"]["usage"]["lookups"]
        assert lookups == {"hit": 1, "unavailable": 2}
    finally:
        server.close()
    logged = delta.tables(config).predictions.read().to_pandas().set_index("request_id")
    assert logged.loc[answer.json()["request_id"], "monthly_charges"].isna().all()
