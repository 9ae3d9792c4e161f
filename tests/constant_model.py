"""Registered models for the online gate's tests (pyfuncs, not lakeloop models): one no better than
chance, answering every row with class 0 at probability 0.5, and one that raises on every call."""

from __future__ import annotations

import mlflow
import pandas as pd


class ConstantChurn(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        rows = len(model_input)
        return pd.DataFrame({"prediction": [0] * rows, "probability_0": [0.5] * rows, "probability_1": [0.5] * rows})


class Broken(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        raise RuntimeError("this model cannot score anything")


def register_constant(tracking_uri: str, name: str, model: mlflow.pyfunc.PythonModel | None = None) -> str:
    """A new version of `name` holding `model` (default ConstantChurn); returns the version."""
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_name="constant-churn"):
        info = mlflow.pyfunc.log_model(name="model", python_model=model or ConstantChurn())
    return str(mlflow.register_model(info.model_uri, name).version)
