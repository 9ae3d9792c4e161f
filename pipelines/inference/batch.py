"""Batch inference: score a Delta table, a Ray Dataset or a DataFrame with a registered model.

    from pipelines.inference.batch import predict
    scored = predict("/data/events", model="models:/lakeloop-churn@champion", output="/data/scored")

    lakeloop predict --input PATH [--version N] --output PATH
    ray job submit --working-dir . -- python -m pipelines.batch_inference --input ... --output ...

The same pyfunc as serving (feature pipeline + network) runs in an actor pool, each actor
loading the model once; the version is resolved once so every row is scored by the same model.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import ray.data

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import MODEL_NAME, MODEL_VERSION
from pipelines.adapters.registry import ModelRef, Registry
from pipelines.core.config import LakeloopConfig, load_config
from pipelines.core.errors import LakeloopError


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str


def resolve_model(model: str | None, config: LakeloopConfig) -> ResolvedModel:
    """models:/NAME@ALIAS or models:/NAME/VERSION (default: the serving alias) -> a fixed version."""
    uri = model or f"models:/{config.mlflow.registered_model}@{config.serving.alias}"
    if not uri.startswith("models:/"):
        raise LakeloopError(f"model must be a registry URI like models:/NAME@ALIAS or models:/NAME/VERSION, got {uri}")
    path = uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        ref = Registry.connect(config.mlflow.tracking_uri, name).resolve(alias)
        if ref is None:
            raise LakeloopError(f"{uri}: no version of '{name}' has the alias '{alias}'")
        return ResolvedModel(name, ref.version)
    name, _, version = path.partition("/")
    if not version.isdigit():
        raise LakeloopError(f"{uri}: expected models:/NAME/VERSION with a numeric version")
    return ResolvedModel(name, version)


class BatchScorer:
    """Actor-pool UDF: loads the model once, appends predictions and the model's identity."""

    def __init__(self, tracking_uri: str, name: str, version: str, features: list[str]) -> None:
        self.predictor = Registry.connect(tracking_uri, name).load(ModelRef(name, version, "", None))
        self.name, self.version, self.features = name, version, features

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        scored = self.predictor.predict_frame(batch[self.features])
        scored.index = batch.index
        out = pd.concat([batch, scored], axis=1)
        out[MODEL_NAME] = self.name
        out[MODEL_VERSION] = self.version
        return out


def _as_dataset(
    source: str | ray.data.Dataset | pd.DataFrame, version: int | None, config: LakeloopConfig
) -> ray.data.Dataset:
    if isinstance(source, ray.data.Dataset):
        return source
    if isinstance(source, pd.DataFrame):
        return ray.data.from_pandas(source)
    if isinstance(source, str):
        options = config.storage.storage_options
        table = delta.open_table(source, options, version)
        delta.require_readable(table, source)
        return delta.ray_read(source, options, table.version())
    raise LakeloopError(
        f"source must be a Delta table path, a ray.data.Dataset or a pandas DataFrame, not {type(source).__name__}"
    )


def predict(
    source: str | ray.data.Dataset | pd.DataFrame,
    model: str | None = None,
    output: str | None = None,
    *,
    version: int | None = None,
    config: LakeloopConfig | None = None,
) -> ray.data.Dataset:
    """Score every row; with `output`, also append the scored rows to that Delta table."""
    config = config or load_config()
    resolved = resolve_model(model, config)
    source = config.source_table(source) if isinstance(source, str) else source
    output = config.source_table(output) if output else None
    data = _as_dataset(source, version, config)
    missing = [c for c in config.dataset.feature_names if c not in data.schema().names]
    if missing:
        raise LakeloopError(f"input lacks feature columns: {', '.join(missing)}")
    pool = config.batch_inference
    scored = data.map_batches(
        BatchScorer,
        fn_constructor_kwargs={
            "tracking_uri": config.mlflow.tracking_uri,
            "name": resolved.name,
            "version": resolved.version,
            "features": config.dataset.feature_names,
        },
        batch_format="pandas",
        batch_size=pool.batch_size,
        concurrency=(pool.min_actors, pool.max_actors),
        num_cpus=pool.cpus_per_actor,
    )
    if output:
        scored = scored.materialize()
        delta.ray_append(scored, output, config.storage.storage_options)
    return scored
