from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import LakeloopConfig, parse_config
from tests.helpers import demo_raw_config

ENV_OVERRIDES = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "LAKELOOP_STORAGE_ROOT", "LAKELOOP_CONFIG")


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
