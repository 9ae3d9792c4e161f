"""Scoring a batch of rows with a lakeloop model, in a module of its own: a scoring actor imports this
module and what the model's pickle needs (torch or xgboost, the feature transform), not MLflow or the
registry (`pipelines.inference.scoring` imports both: about 1 s more per actor start on 2 cores)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import pyarrow as pa

from pipelines.adapters.prediction_log import MODEL_NAME, MODEL_VERSION

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.adapters.registry import Predictor


def score_batch(predictor: Predictor, batch: pa.Table, name: str, version: str, features: list[str]) -> pa.Table:
    """Arrow in, Arrow out, no pandas: the model reads the feature columns as Arrow (strings are looked
    up in Arrow), the batch's columns pass through uncopied and the predictions are appended as Arrow
    columns, then the model's identity. Scoring a scored table replaces its prediction columns."""
    scored = predictor.predict_columns({column: batch.column(column) for column in features})
    added = [*scored.columns, MODEL_NAME, MODEL_VERSION]
    batch = batch.drop_columns([c for c in added if c in batch.column_names])
    for column, values in scored.columns.items():
        batch = batch.append_column(column, pa.array(values))
    batch = batch.append_column(MODEL_NAME, pa.repeat(name, batch.num_rows))
    return batch.append_column(MODEL_VERSION, pa.repeat(version, batch.num_rows))


class ScoringActor:
    """One actor of a scoring pool: takes the driver's model from the object store once, then scores
    every block it is sent, `batch_size` rows at a time (the transform's matrix stays that small)."""

    def __init__(
        self, model: Predictor, name: str, version: str, features: list[str], threads: int, batch_size: int
    ) -> None:
        """`model` is sent as an object reference; Ray resolves a top-level argument's reference before
        the constructor runs, so the actor reads the model from the object store once, unpickled here
        (importing torch only when the model is a network: 1.4 s of an actor's start on 2 cores)."""
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        self.predictor = model
        estimator = getattr(self.predictor, "estimator", None)
        if hasattr(estimator, "threads"):  # a tree ensemble: as many threads as the actor's CPUs
            estimator.threads = threads
        self.name, self.version, self.features, self.batch_size = name, version, features, batch_size

    def score(self, block: pa.Table | pd.DataFrame) -> pa.Table:
        if not isinstance(block, pa.Table):  # a Dataset made from pandas holds pandas blocks
            block = pa.Table.from_pandas(block, preserve_index=False)
        parts = [
            score_batch(self.predictor, block.slice(start, self.batch_size), self.name, self.version, self.features)
            for start in range(0, max(block.num_rows, 1), self.batch_size)
        ]
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]
