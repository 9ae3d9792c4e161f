"""Batch inference's API refuses early, naming the problem, before any Ray or MLflow work."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.adapters.local_services import free_port
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.inference.scoring import predict


def test_an_unreachable_tracking_server_is_named(config: LakeloopConfig) -> None:
    """Without the check, MLflow's own retries took 4 min and then raised its own traceback."""
    dead = f"http://127.0.0.1:{free_port()}"
    config = config.model_copy(update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": dead})})
    with pytest.raises(LakeloopError, match=f"MLflow tracking server {dead} is not reachable"):
        predict(pd.DataFrame({"tenure_months": [1]}), config=config)


def test_a_model_that_is_not_a_registry_uri_is_refused(config: LakeloopConfig) -> None:
    from pipelines.inference.scoring import resolve_model

    with pytest.raises(LakeloopError, match="models:/NAME@ALIAS"):
        resolve_model("runs:/abc/model", config)
