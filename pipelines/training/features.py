"""The fitted feature pipeline: one picklable object that turns raw records into model inputs.

Training (Ray Data, in parallel), batch inference and serving (pandas, in-process) all call the
same fitted Ray preprocessor chain, so every path transforms rows identically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from ray.data.preprocessors import Chain, Concatenator, OneHotEncoder, SimpleImputer, StandardScaler

from pipelines.core.config import DatasetConfig
from pipelines.core.splits import WEIGHT_COLUMN

if TYPE_CHECKING:
    import ray.data

FEATURES_COLUMN = "features"
TARGET_COLUMN = "target"
SAMPLE_WEIGHT_COLUMN = "weight"  # per-row training weight (older rows after drift weigh less)


def _build_chain(dataset: DatasetConfig) -> Chain:
    steps = []
    if dataset.numeric:
        steps += [SimpleImputer(dataset.numeric, strategy="mean"), StandardScaler(dataset.numeric)]
    if dataset.categorical:
        steps += [SimpleImputer(dataset.categorical, strategy="most_frequent"), OneHotEncoder(dataset.categorical)]
    steps.append(
        Concatenator(
            dataset.numeric + dataset.categorical, output_column_name=FEATURES_COLUMN, dtype=np.float32, flatten=True
        )
    )
    return Chain(*steps)


class FeaturePipeline:
    """Imputation, scaling and one-hot encoding fitted on the training split, plus label encoding."""

    def __init__(self, dataset: DatasetConfig) -> None:
        self.dataset = dataset
        self.chain = _build_chain(dataset)
        self.output_dim: int | None = None

    @property
    def feature_names(self) -> list[str]:
        return self.dataset.feature_names

    @property
    def classes(self) -> list[str | int]:
        return list(self.dataset.classes or [])

    def fit(self, train: ray.data.Dataset) -> FeaturePipeline:
        self.chain.fit(train.select_columns(self.feature_names))
        self.output_dim = int(self.transform_frame(train.limit(1).to_pandas()).shape[1])
        return self

    def encode_target(self, labels: pd.Series) -> np.ndarray:
        if self.dataset.task == "regression":
            return labels.to_numpy(np.float32)
        return self.dataset.encode_labels(labels)

    def _select_and_encode(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = batch[self.feature_names].copy()
        out[TARGET_COLUMN] = self.encode_target(batch[self.dataset.label])
        weighted = WEIGHT_COLUMN in batch.columns
        out[SAMPLE_WEIGHT_COLUMN] = (
            batch[WEIGHT_COLUMN].to_numpy(np.float32) if weighted else np.ones(len(batch), np.float32)
        )
        return out

    def transform(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        """Labelled rows -> (features, target) in parallel with map_batches."""
        encoded = ds.map_batches(self._select_and_encode, batch_format="pandas")
        return self.chain.transform(encoded)

    def coerce(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Numeric features as floats (None -> NaN, imputed later); non-numbers are an error naming the column."""
        # The preprocessors align on the index: a filtered frame (gaps in its index) must not misalign.
        out = frame[self.feature_names].reset_index(drop=True)
        for name in self.dataset.numeric:
            try:
                out[name] = pd.to_numeric(out[name], errors="raise").astype("float64")
            except (ValueError, TypeError):
                raise ValueError(f"feature '{name}' must be numeric") from None
        return out

    def transform_frame(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw feature records -> a float32 matrix, in-process (serving, pyfunc, tests)."""
        out = self.chain.transform_batch(self.coerce(frame))
        return np.stack(out[FEATURES_COLUMN].to_numpy()).astype(np.float32, copy=False)
