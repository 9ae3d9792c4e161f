"""The actor-pool UDF of batch inference, in a module of its own: each actor imports this module and
what the model's pickle needs (torch, the feature transform), not MLflow or the registry
(`pipelines.inference.scoring` imports both: about 1 s more per actor start on 2 cores)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import ray

from pipelines.adapters.prediction_log import MODEL_NAME, MODEL_VERSION

if TYPE_CHECKING:
    from pipelines.adapters.registry import Predictor


class BatchScorer:
    """Actor-pool UDF: takes the driver's model from the object store, appends predictions and the
    model's identity."""

    def __init__(self, model: ray.ObjectRef, name: str, version: str, features: list[str], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.predictor: Predictor = ray.get(model)
        estimator = getattr(self.predictor, "estimator", None)
        if hasattr(estimator, "threads"):  # a tree ensemble: as many threads as the actor's CPUs
            estimator.threads = threads
        self.name, self.version, self.features = name, version, features

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Arrow in, Arrow out, no pandas: the model reads the feature columns as Arrow (strings are
        looked up in Arrow), the batch's columns pass through uncopied and the predictions are appended
        as Arrow columns."""
        scored = self.predictor.predict_columns({name: batch.column(name) for name in self.features})
        added = [*scored.columns, MODEL_NAME, MODEL_VERSION]
        batch = batch.drop_columns([c for c in added if c in batch.column_names])  # re-scoring a scored table
        for name, values in scored.columns.items():
            batch = batch.append_column(name, pa.array(values))
        batch = batch.append_column(MODEL_NAME, pa.repeat(self.name, batch.num_rows))
        return batch.append_column(MODEL_VERSION, pa.repeat(self.version, batch.num_rows))
