"""The MLflow wrapper of a lakeloop model: what `mlflow.pyfunc.load_model` and `mlflow models serve` run."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from pipelines.training.fitted_model import LakeloopModel


class LakeloopPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper: takes a DataFrame of the configured feature columns."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.model = LakeloopModel.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        return self.model.predict_frame(model_input)
