from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.core.config import LakeloopConfig, parse_config
from tests.helpers import demo_raw_config

ENV_OVERRIDES = (
    "RAY_ADDRESS",
    "MLFLOW_TRACKING_URI",
    "LAKELOOP_STORAGE_ROOT",
    "LAKELOOP_CONFIG",
    "LAKELOOP_CONFIG_YAML",
    "LAKELOOP_API_KEY",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that start their own Ray head run first, before any test creates the shared
    `ray_local` cluster: Ray's job agent has one port per machine (RAY_JOB_AGENT_PORT), so while the
    shared cluster lives, a second head's Jobs API could take no job (`start_ray_head` refuses)."""
    items.sort(key=lambda item: item.get_closest_marker("own_cluster") is None)  # stable: file order otherwise


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's cluster or tracking server from the environment."""
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def raw_config(tmp_path: Path) -> dict:
    return demo_raw_config(tmp_path / "data")


@pytest.fixture
def config(raw_config: dict) -> LakeloopConfig:
    return parse_config(raw_config, "test-config")


@pytest.fixture(scope="session")
def ray_local() -> Iterator[str]:
    """A real local Ray cluster shared by the tests that need one, shut down at the end; yields
    its dashboard URL. The dashboard (loopback) hosts the State API (used by Ray Train's cleanup
    and the tests) and the Jobs API. One cluster per machine: a second ray.init cluster could not
    take jobs, because Ray's dashboard agent always listens on the same port."""
    import ray

    context = ray.init(
        address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level=logging.WARNING
    )
    yield f"http://{context.dashboard_url}"
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` subprocess on loopback with a SQLite backend, stopped by pid."""
    from pipelines.adapters.local_services import start_mlflow_server, stop_pid

    process, service = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield service.url
    stop_pid(process.pid)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A real S3-protocol server (moto's standalone server) on loopback with one bucket, stopped by
    pid. Tests hand its `env` (the standard AWS variables) to whatever should use it."""
    from pipelines.adapters.local_services import stop_pid
    from tests.servers import start_object_store

    store = start_object_store(tmp_path_factory.mktemp("s3") / "moto.log")
    yield store
    stop_pid(store.pid)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server (Debian's package) on loopback, stopped by pid; yields its URL."""
    from pipelines.adapters.local_services import stop_pid
    from tests.servers import start_redis

    pid, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_pid(pid)


@pytest.fixture(scope="session")
def mlflow_at_scale(tmp_path_factory: pytest.TempPathFactory, object_store) -> Iterator[str]:
    """A real `mlflow server` as a cluster runs it: PostgreSQL 15 as the tracking and registry
    store, artifacts on the object store. Yields its URL."""
    from pipelines.adapters.local_services import start_mlflow_server, stop_pid
    from tests.servers import start_postgres, stop_postgres

    database = start_postgres()
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in object_store.env.items():
                env.setenv(name, value)
            process, service = start_mlflow_server(
                tmp_path_factory.mktemp("mlflow-pg"),
                backend_store_uri=database.uri("mlflow"),
                artifacts_destination=object_store.uri("mlflow-artifacts"),
            )
        yield service.url
        stop_pid(process.pid)
    finally:
        stop_postgres(database)
