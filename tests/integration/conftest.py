from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import ray

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray cluster shared by the integration tests, shut down at the end."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()
