"""Where the Serve app gets models: which version an alias points at, and loading that version.

The deployment takes any `ModelSource`, so it can be tested without a registry (the Ray e2e
examples inject their loader the same way); `MlflowModelSource` is the production one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import pandas as pd


class Predictor(Protocol):
    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame: ...


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: str
    run_id: str | None
    health: str = ""  # "degraded" when the monitor found it failing and retraining did not fix it
    health_reason: str = ""


class ModelSource(Protocol):
    def resolve(self, alias: str) -> ModelRef | None: ...

    def load(self, ref: ModelRef) -> Predictor: ...


class _PyfuncPredictor:
    """Any registered pyfunc, for models not logged by lakeloop."""

    def __init__(self, model) -> None:
        self.model = model

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.model.predict(frame))


class MlflowModelSource:
    def __init__(self, tracking_uri: str, name: str) -> None:
        self.tracking_uri = tracking_uri
        self.name = name

    def resolve(self, alias: str) -> ModelRef | None:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        try:
            version = MlflowClient(self.tracking_uri).get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise
        from pipelines.registry import HEALTH_REASON_TAG, HEALTH_TAG

        return ModelRef(self.name, str(version.version), alias, version.run_id, version.tags.get(HEALTH_TAG, ""),
                        version.tags.get(HEALTH_REASON_TAG, ""))

    def load(self, ref: ModelRef) -> Predictor:
        import mlflow

        from pipelines.scoring import LakeloopPyfunc

        mlflow.set_tracking_uri(self.tracking_uri)
        model = mlflow.pyfunc.load_model(f"models:/{ref.name}/{ref.version}")
        try:
            python_model = model.unwrap_python_model()
        except Exception:  # noqa: BLE001 - not a PythonModel flavour
            python_model = None
        # lakeloop's own models skip MLflow's schema enforcement: the app has validated the rows.
        return python_model.model if isinstance(python_model, LakeloopPyfunc) else _PyfuncPredictor(model)
