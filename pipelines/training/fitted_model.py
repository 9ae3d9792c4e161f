"""Raw feature records in, predictions out: the fitted feature pipeline and the trained estimator (of
any family: pipelines.core.estimators) as one unit.

`LakeloopModel` is what evaluation, batch inference and serving call; `LakeloopPyfunc`
(pipelines.training.pyfunc) wraps it for MLflow so `mlflow.pyfunc.load_model` and `mlflow models
serve` run it unchanged. This module does not import MLflow: a batch-inference actor unpickles the
model without it (this module took 3.25 s to import in a fresh process with MLflow, 2.29 s without).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core import metrics
from pipelines.core.config import DatasetConfig
from pipelines.core.estimators import Estimator
from pipelines.core.feature_transform import Column
from pipelines.core.model_output import PREDICTION_COLUMN, PROBABILITY_PREFIX, Scored
from pipelines.core.module_spec import ModuleSpec, class_module, module_source
from pipelines.training.features import FeaturePipeline


class LakeloopModel:
    def __init__(self, pipeline: FeaturePipeline, estimator: Estimator) -> None:
        self.pipeline = pipeline
        self.estimator = estimator
        # the classes as pandas types them (ints -> int64, strings -> object): the prediction column's dtype
        self._classes = pd.Series(self.pipeline.classes).to_numpy()

    @property
    def family(self) -> str:
        return self.estimator.family

    @property
    def task(self) -> str:
        return self.pipeline.dataset.task

    @property
    def feature_names(self) -> list[str]:
        return self.pipeline.feature_names

    def code_modules(self) -> list[str]:
        """The user's modules the estimator unpickles from (a torch module's class, a scikit-learn-API
        estimator's), as files or package directories: what Ray ships to workers as `py_modules`."""
        names = {type(self.estimator).__module__}
        if isinstance(spec := getattr(self.estimator, "spec", None), ModuleSpec):
            names.add(class_module(spec.class_path))
        if (inner := getattr(self.estimator, "estimator", None)) is not None:
            names.add(type(inner).__module__)
        return sorted({source for name in names if (source := module_source(name))})

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The pyfunc's contract: a frame of the feature columns in, a frame of the output columns out."""
        # the columns in one pass over the frame: a `frame[name]` per feature cost 0.05 of a 0.45 ms
        # 1-row call on 41 features, `items()` 0.016
        wanted = set(self.feature_names)
        columns = {name: column for name, column in frame.items() if name in wanted}
        missing = [c for c in self.feature_names if c not in columns]
        if missing:
            raise ValueError(f"input is missing feature columns: {', '.join(missing)}")
        repeated = [] if frame.columns.is_unique else frame.columns[frame.columns.duplicated()]
        if twice := sorted(wanted.intersection(repeated)):
            raise ValueError(f"input has feature columns more than once: {', '.join(map(str, twice))}")
        if frame.empty:
            return pd.DataFrame({PREDICTION_COLUMN: []})
        outputs = self.predict_columns(columns).columns
        # the frame from its arrays and the names built once: `pd.DataFrame(outputs)` infers an Index
        # from the names and checks the arrays, 0.07-0.1 ms of a 1-row call, against 0.025
        return pd.DataFrame._from_arrays(
            list(outputs.values()), columns=self._output_names, index=pd.RangeIndex(len(frame)), verify_integrity=False
        )

    # cached on first use: a model pickled before these attributes existed loads as well
    @cached_property
    def _output_columns(self) -> tuple[str, ...]:
        """The output columns in order: the prediction, then (classification) each class's probability."""
        if self.task == "regression":
            return (PREDICTION_COLUMN,)
        return (PREDICTION_COLUMN, *probability_columns(self.pipeline.dataset))

    @cached_property
    def _output_names(self) -> pd.Index:
        return pd.Index(self._output_columns, dtype=object)

    def predict_columns(self, columns: Mapping[str, Column]) -> Scored:
        """Feature columns (numpy, Arrow or pandas; Serve's validated columns, batch inference's Arrow
        batches) in, output columns out, with no DataFrame either way: on 1 row, building and reading
        the frames cost 0.2 of the 0.3 ms the model took (tests/unit/test_fitted_model.py checks both agree)."""
        encoded = self.pipeline.encode(columns)
        matrix = self.pipeline.onehot(encoded.matrix) if self.estimator.encoding == "onehot" else encoded.matrix
        return Scored(self._outputs(self.estimator.outputs(matrix)), {n: c for n, c in encoded.unknown.items() if c})

    def _outputs(self, outputs: np.ndarray) -> dict[str, np.ndarray]:
        if self.task == "regression":
            return {PREDICTION_COLUMN: outputs}
        columns = {PREDICTION_COLUMN: self._classes[outputs.argmax(axis=1)]}
        for i, name in enumerate(self._output_columns[1:]):
            columns[name] = outputs[:, i]
        return columns

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "pipeline.pkl").write_bytes(pickle.dumps(self.pipeline))
        (directory / "estimator.pkl").write_bytes(pickle.dumps(self.estimator))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> LakeloopModel:
        directory = Path(directory)
        pipeline = pickle.loads((directory / "pipeline.pkl").read_bytes())
        return cls(pipeline, pickle.loads((directory / "estimator.pkl").read_bytes()))


def probability_columns(dataset: DatasetConfig) -> list[str]:
    return [f"{PROBABILITY_PREFIX}{c}" for c in dataset.classes or []]


def evaluate_predictions(predictions: pd.DataFrame, labels: pd.Series, dataset: DatasetConfig) -> dict[str, float]:
    """Metrics from a pyfunc's output frame, so the candidate and a champion are scored the same way."""
    if dataset.task == "regression":
        return metrics.regression(labels.to_numpy(float), predictions[PREDICTION_COLUMN].to_numpy(float))
    probability = predictions[probability_columns(dataset)].to_numpy(float)
    return metrics.classification(dataset.encode_labels(labels), probability)
