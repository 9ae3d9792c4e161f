"""Batch inference: score a Delta table, a Ray Dataset or a DataFrame with a registered model.

    from pipelines.inference.scoring import predict
    scored = predict("/data/events", model="models:/lakeloop-churn@champion", output="/data/scored")

    lakeloop predict --input PATH [--version N] --output PATH
    ray job submit --working-dir . -- python -m pipelines.predict --input ... --output ...

The same model as serving (feature pipeline + estimator) scores every row. With feature views
configured, an input without the views' columns is joined to them point-in-time at each row's event
time (pipelines/feature_tables/enrich.py), as its training set was. The driver resolves the
version once and loads the model once (and keeps it for the next call). An input of at most
`batch_inference.inline_rows` rows is scored right here, in the driver: on a small cluster a pool
cannot win on so few rows. Larger inputs are scored by a
pool of actors that take the model from Ray's object store (no actor downloads it from MLflow) and
stay warm across calls in this driver: a second call with the same model version starts no actor and
loads no model. Each actor's torch (or xgboost) uses as many threads as the CPUs it reserves, so the
pool does not oversubscribe the cores it was given. `release_pools()` stops the actors. An actor that
has not started within `batch_inference.actor_start_timeout_s` (no CPU free for it) is stopped rather
than left holding the blocks sent to it; with no actor started, the driver scores the input, block by
block, and says so in the log.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

import pandas as pd
import pyarrow as pa
import ray
import ray.data
from ray.data._internal.logical.interfaces import LogicalPlan
from ray.data._internal.logical.operators.from_operators import FromArrow
from ray.data._internal.stats import DatasetStats
from ray.data.block import BlockMetadataWithSchema
from ray.data.dataset import MaterializedDataset

from pipelines.adapters import delta
from pipelines.adapters.registry import ModelRef, Registry, require_tracking_server
from pipelines.core.config import LakeloopConfig, load_config
from pipelines.core.errors import LakeloopError
from pipelines.feature_tables import enrich
from pipelines.inference.scoring_actor import ScoringActor, module_archive, score_batch, score_block

logger = logging.getLogger(__name__)


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


def _as_dataset(
    source: str | ray.data.Dataset | pd.DataFrame, version: int | None, config: LakeloopConfig
) -> ray.data.Dataset:
    if isinstance(source, ray.data.Dataset):
        return source
    if isinstance(source, pd.DataFrame):  # blocks made here: from_pandas sends a task of one CPU per block
        table = pa.Table.from_pandas(source, preserve_index=False)
        size = config.batch_inference.batch_size
        return ray.data.from_blocks([table.slice(start, size) for start in range(0, max(table.num_rows, 1), size)])
    if isinstance(source, str):
        table = delta.tables(config).named(source)
        opened = table.open(version)
        table.require_readable(opened)
        return table.ray_read(opened.version())
    raise LakeloopError(
        f"source must be a Delta table path, a ray.data.Dataset or a pandas DataFrame, not {type(source).__name__}"
    )


@dataclass
class ScoringPool:
    """Scoring actors that hold one model version; blocks are sent to them round robin, at most two
    in flight per actor (the input streams through the object store rather than landing all at once)."""

    key: tuple
    actors: list = field(default_factory=list)

    @classmethod
    def start(cls, key: tuple, predictor, resolved: ResolvedModel, features: list[str], settings) -> ScoringPool:
        count = settings.starting_actors(ray.available_resources().get("CPU", 0.0))
        remote = ray.remote(num_cpus=settings.cpus_per_actor)(ScoringActor)
        threads = max(1, int(settings.cpus_per_actor))
        # the model, and a user's family's module (the driver may have it only from the model MLflow
        # downloaded here), through the object store; the model inside a list, so that the actor
        # unpickles it only once that module is importable
        model, code = [ray.put(predictor)], ray.put(module_archive(getattr(predictor, "code_modules", list)()))
        actors = [
            remote.remote(model, code, resolved.name, resolved.version, features, threads, settings.batch_size)
            for _ in range(count)
        ]
        return cls(key, _started(actors, settings.actor_start_timeout_s))

    def score(self, data: ray.data.Dataset) -> ray.data.Dataset:
        outputs: list[ray.ObjectRef] = []
        metadata: list[ray.ObjectRef] = []
        in_flight: list[ray.ObjectRef] = []
        for bundle in data.iter_internal_ref_bundles():
            for block in bundle.block_refs:
                if len(in_flight) >= 2 * len(self.actors):
                    _, in_flight = ray.wait(in_flight, num_returns=1)
                actor = self.actors[len(outputs) % len(self.actors)]
                scored, described = actor.score.options(num_returns=2).remote(block)
                outputs.append(scored)
                metadata.append(described)
                in_flight.append(scored)
        return _materialized(outputs, ray.get(metadata))

    def stop(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor)


def _started(actors: list, timeout_s: float) -> list:
    """The actors that started within `timeout_s`; the others are stopped (an actor waiting for a CPU
    that Serve's replicas never free would hold every block sent to it, and `ray.get` on its results
    waits forever). An actor whose start failed (a model it cannot load) raises here."""
    probes = [actor.ready.remote() for actor in actors]
    ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout_s)
    ray.get(ready)
    started = [actor for actor, probe in zip(actors, probes, strict=True) if probe in ready]
    for actor, probe in zip(actors, probes, strict=True):
        if probe not in ready:
            ray.kill(actor)
    return started


_POOLS: dict[tuple, ScoringPool] = {}  # this driver's warm pool (one: a new model version replaces it)


def warm_pools() -> list[ScoringPool]:
    """The scoring pools this driver keeps warm (at most one)."""
    return list(_POOLS.values())


def release_pools() -> None:
    """Stop the warm scoring actors (they hold their CPUs until then, or until Ray disconnects)."""
    for pool in _POOLS.values():
        pool.stop()
    _POOLS.clear()


def _pool(predictor, resolved: ResolvedModel, config: LakeloopConfig) -> ScoringPool | None:
    """This driver's warm pool for the model, started if need be; None when no actor could start."""
    settings = config.batch_inference
    key = (
        ray.get_runtime_context().get_job_id(),
        resolved.name,
        resolved.version,
        settings,
        tuple(config.dataset.feature_names),
    )
    if key not in _POOLS:
        release_pools()
        pool = ScoringPool.start(key, predictor, resolved, config.dataset.feature_names, settings)
        if not pool.actors:
            return None
        _POOLS[key] = pool
    return _POOLS[key]


def _score_in_driver(predictor, data: ray.data.Dataset, resolved: ResolvedModel, config: LakeloopConfig):
    """Every block scored here, one at a time, each result into the object store."""
    settings, features = config.batch_inference, config.dataset.feature_names
    logger.warning(
        "no scoring actor started within %ss (each needs %s CPU; %s free): scoring in the driver",
        settings.actor_start_timeout_s,
        settings.cpus_per_actor,
        ray.available_resources().get("CPU", 0.0),
    )
    outputs, metadata = [], []
    for bundle in data.iter_internal_ref_bundles():
        for block in bundle.block_refs:
            rows = ray.get(block)
            scored = score_block(predictor, rows, resolved.name, resolved.version, features, settings.batch_size)
            outputs.append(ray.put(scored))
            metadata.append(BlockMetadataWithSchema.from_block(scored))
    return _materialized(outputs, metadata)


def _materialized(blocks: list[ray.ObjectRef], metadata: list[BlockMetadataWithSchema]) -> ray.data.Dataset:
    """A Dataset of scored blocks whose metadata is already known. `ray.data.from_arrow_refs` sends a
    task of one CPU per block to read it, and with Serve's replicas and the pool's actors holding the
    CPUs those tasks never started (a CI run hung there): each block's metadata comes with it
    instead, into the same logical plan from_arrow_refs builds (Ray Data's internal operator, pinned
    with Ray in constraints.txt)."""
    context = ray.data.DataContext.get_current().copy()
    plan = LogicalPlan(FromArrow(blocks, metadata), context)
    return MaterializedDataset(plan, context, DatasetStats(metadata={"FromArrow": metadata}, parent=None))


_MODELS: dict[tuple[str, str, str], object] = {}  # the last model this driver loaded (a version never changes)


def _loaded(config: LakeloopConfig, resolved: ResolvedModel):
    key = (config.mlflow.tracking_uri, resolved.name, resolved.version)
    if key not in _MODELS:
        _MODELS.clear()
        registry = Registry.connect(config.mlflow.tracking_uri, resolved.name)
        _MODELS[key] = registry.load(ModelRef(resolved.name, resolved.version, "", None))
    return _MODELS[key]


def _inline_input(source, version: int | None, config: LakeloopConfig) -> pa.Table | None:
    """The input as one Arrow table when it is small enough to score in the driver, else None."""
    limit = config.batch_inference.inline_rows
    if isinstance(source, pd.DataFrame):
        return pa.Table.from_pandas(source, preserve_index=False) if len(source) <= limit else None
    if isinstance(source, str):
        table = delta.tables(config).named(source)
        opened = table.open(version)
        table.require_readable(opened)
        return opened.to_pyarrow_table() if opened.count() <= limit else None
    return None


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
    require_tracking_server(config.mlflow.tracking_uri)  # MLflow's own retries took 4 min to fail here
    resolved = resolve_model(model, config)
    features = config.dataset.feature_names
    inline = _inline_input(source, version, config)
    data = None if inline is not None else _as_dataset(source, version, config)
    names = inline.column_names if inline is not None else data.schema().names
    if enrich.needs_views(config, names):  # the views' values as of each row's event time
        if inline is not None:
            inline = enrich.joined_table(config, inline)
        else:
            data = enrich.joined_dataset(config, data)
        names = inline.column_names if inline is not None else data.schema().names
    missing = [c for c in features if c not in names]
    if missing:
        raise LakeloopError(f"input lacks feature columns: {', '.join(missing)}")
    predictor = _loaded(config, resolved)
    if inline is not None:
        table = score_batch(predictor, inline, resolved.name, resolved.version, features)
        if output:
            delta.tables(config).named(output).append(table)
        # from_blocks reads the block's metadata here; from_arrow sends a task for it, and the first
        # in a cluster waits for a worker process to start (0.8 of 1M rows' 3.3 s first call here)
        return ray.data.from_blocks([table])
    pool = _pool(predictor, resolved, config)
    scored = pool.score(data) if pool else _score_in_driver(predictor, data, resolved, config)
    if output:
        delta.tables(config).named(output).ray_append(scored)
    return scored
