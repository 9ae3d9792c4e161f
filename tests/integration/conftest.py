from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import ray

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray cluster shared by the integration tests, shut down at the end."""
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` subprocess on loopback with a SQLite backend, stopped by pid."""
    from pipelines.stack import start_mlflow_server, stop_pid

    process, service = start_mlflow_server(tmp_path_factory.mktemp("mlflow"))
    yield service.url
    stop_pid(process.pid)
