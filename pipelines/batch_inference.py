"""Batch inference: score a Delta table, a Ray Dataset or a DataFrame with a registered model.

    from pipelines.batch_inference import predict
    scored = predict("/data/events", model="models:/lakeloop-churn@champion", output="/data/scored")

    lakeloop predict --input PATH [--version N] --output PATH
    ray job submit --working-dir . -- python -m pipelines.batch_inference --input ... --output ...

The same pyfunc as serving (feature pipeline + network) runs in an actor pool, each actor
loading the model once; the version is resolved once so every row is scored by the same model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pandas as pd
import ray.data

from pipelines import delta_tables, runtime
from pipelines.config import LakeloopConfig, load_config
from pipelines.errors import LakeloopError
from pipelines.steps import StepResult, step_main

MODEL_NAME_COLUMN = "model_name"
MODEL_VERSION_COLUMN = "model_version"


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str


def resolve_model(model: str | None, config: LakeloopConfig) -> ResolvedModel:
    """models:/NAME@ALIAS or models:/NAME/VERSION (default: the serving alias) -> a fixed version."""
    from serve.model_source import MlflowModelSource

    uri = model or f"models:/{config.mlflow.registered_model}@{config.serving.alias}"
    if not uri.startswith("models:/"):
        raise LakeloopError(f"model must be a registry URI like models:/NAME@ALIAS or models:/NAME/VERSION, got {uri}")
    path = uri.removeprefix("models:/")
    if "@" in path:
        name, alias = path.split("@", 1)
        ref = MlflowModelSource(config.mlflow.tracking_uri, name).resolve(alias)
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
        from serve.model_source import MlflowModelSource, ModelRef

        self.predictor = MlflowModelSource(tracking_uri, name).load(ModelRef(name, version, "", None))
        self.name, self.version, self.features = name, version, features

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        scored = self.predictor.predict_frame(batch[self.features])
        scored.index = batch.index
        out = pd.concat([batch, scored], axis=1)
        out[MODEL_NAME_COLUMN] = self.name
        out[MODEL_VERSION_COLUMN] = self.version
        return out


def _as_dataset(source: str | ray.data.Dataset | pd.DataFrame, version: int | None, config: LakeloopConfig) -> ray.data.Dataset:
    if isinstance(source, ray.data.Dataset):
        return source
    if isinstance(source, pd.DataFrame):
        return ray.data.from_pandas(source)
    if isinstance(source, str):
        options = config.storage.storage_options
        table = delta_tables.open_table(source, options, version)
        delta_tables.require_readable(table, source)
        return ray.data.read_delta(source, version=table.version(), storage_options=options or None)
    raise LakeloopError(f"source must be a Delta table path, a ray.data.Dataset or a pandas DataFrame, not {type(source).__name__}")


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
    source = delta_tables.absolute_uri(source) if isinstance(source, str) else source
    output = delta_tables.absolute_uri(output) if output else None
    data = _as_dataset(source, version, config)
    missing = [c for c in config.dataset.feature_names if c not in data.schema().names]
    if missing:
        raise LakeloopError(f"input lacks feature columns: {', '.join(missing)}")
    pool = config.batch_inference
    scored = data.map_batches(
        BatchScorer,
        fn_constructor_kwargs={"tracking_uri": config.mlflow.tracking_uri, "name": resolved.name,
                               "version": resolved.version, "features": config.dataset.feature_names},
        batch_format="pandas",
        batch_size=pool.batch_size,
        concurrency=(pool.min_actors, pool.max_actors),
        num_cpus=pool.cpus_per_actor,
    )  # fmt: skip
    if output:
        scored = scored.materialize()
        scored.write_delta(output, storage_options=config.storage.storage_options or None)
    return scored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="Delta table to score")
    parser.add_argument("--version", type=int, help="version of the input table (default: latest)")
    parser.add_argument("--output", required=True, help="Delta table to append the scored rows to")
    parser.add_argument("--model", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: the serving alias)")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    with runtime.ray_session(config):
        scored = predict(args.input, args.model, args.output, version=args.version, config=config)
        rows = scored.count()
        first = scored.take(1)[0] if rows else {}
    model = f"{first.get(MODEL_NAME_COLUMN)} version {first.get(MODEL_VERSION_COLUMN)}"
    return StepResult(f"scored {rows} rows of {args.input} with {model} into {args.output}",
                      {"rows": rows, "output": args.output, "model_name": first.get(MODEL_NAME_COLUMN),
                       "model_version": first.get(MODEL_VERSION_COLUMN)})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.batch_inference", add_arguments, run, argv)


if __name__ == "__main__":
    main()
