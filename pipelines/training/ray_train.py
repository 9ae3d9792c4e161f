"""What every family's Ray Train run shares: where checkpoints go (with the configured storage
options), workers and their resources, fault tolerance, which validation metric decides, and the
per-report MLflow log from rank 0 (Ray Train V2 has no MLflow callback)."""

from __future__ import annotations

import logging
import math
import os
import time

import numpy as np
import ray
from mlflow import MlflowClient
from mlflow.entities import Metric
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

from pipelines.adapters import delta
from pipelines.core import metrics
from pipelines.core.config import LakeloopConfig
from pipelines.training.features import FEATURES_COLUMN, SAMPLE_WEIGHT_COLUMN, TARGET_COLUMN

log = logging.getLogger("lakeloop.training")

# Every worker sees the whole (small) validation split, so validation metrics agree across ranks.
DATA_CONFIG = DataConfig(datasets_to_split=["train"])

# Ray Train V2's controller takes one report per health check (every 2 s by default), and a worker
# that reports again blocks until it has: with epochs shorter than that, the poll interval set the
# epoch time (benchmarks/training.py). Ray passes this variable on to the controller and workers.
REPORT_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
REPORT_POLL_S = "0.2"


def storage(config: LakeloopConfig) -> dict:
    """RunConfig's storage_path and storage_filesystem: the configured storage options reach Ray Train
    (it resolves an object-store path with pyarrow's defaults and would miss an endpoint given only there)."""
    filesystem, path = delta.train_filesystem(config.storage, config.train_storage_path)
    return {"storage_path": path, "storage_filesystem": filesystem}


def scaling_config(config: LakeloopConfig, num_workers: int | None = None) -> ScalingConfig:
    train = config.train
    return ScalingConfig(
        num_workers=num_workers or train.num_workers,
        use_gpu=train.use_gpu,
        resources_per_worker={"CPU": train.cpus_per_worker, **({"GPU": 1} if train.use_gpu else {})},
        placement_strategy=train.placement_strategy,
    )


def run_config(config: LakeloopConfig, name: str, callbacks: list | None = None) -> RunConfig:
    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_S)
    return RunConfig(
        name=name,
        **storage(config),
        failure_config=FailureConfig(max_failures=config.train.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
    )


def monitor_metric(config: LakeloopConfig) -> tuple[str, str]:
    """The validation metric that drives early stopping and Tune: the gate's metric."""
    return f"val_{config.gate.metric}", "max" if metrics.greater_is_better(config.gate.metric) else "min"


def improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best + 1e-6 if mode == "max" else value < best - 1e-6)


WORKER_NODE_TAG = "lakeloop.worker_node."  # + rank: the Ray node each rank trained on


def record_worker_node(cfg: dict, rank: int) -> None:
    """Tag the run with the node this rank trains on (the workflow joins them in rank order)."""
    if cfg.get("mlflow_run_id"):
        node = ray.get_runtime_context().get_node_id()
        EpochLogger(cfg.get("tracking_uri"), cfg["mlflow_run_id"]).tag(f"{WORKER_NODE_TAG}{rank}", node)


def worker_nodes(tags: dict[str, str]) -> list[str]:
    """The nodes of a run's ranks, in rank order, from its tags."""
    ranks = {int(k.removeprefix(WORKER_NODE_TAG)): v for k, v in tags.items() if k.startswith(WORKER_NODE_TAG)}
    return [ranks[r] for r in sorted(ranks)]


class EpochLogger:
    """Per-epoch metrics to an MLflow run, from rank 0; failures never stop training."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        if run_id:
            self.client = MlflowClient(tracking_uri)

    def tag(self, key: str, value: str) -> None:
        if self.run_id:
            try:
                self.client.set_tag(self.run_id, key, value)
            except Exception as exc:  # noqa: BLE001 - tracking outages must not kill training
                log.warning("could not tag the MLflow run: %s", exc)

    def log(self, report: dict, epoch: int) -> None:
        if not self.run_id:
            return
        now = int(time.time() * 1000)
        values = [
            Metric(k, float(v), now, epoch)
            for k, v in report.items()
            if isinstance(v, (int, float)) and k not in ("done", "epoch_started_at")
        ]
        try:
            self.client.log_batch(self.run_id, metrics=[m for m in values if math.isfinite(m.value)])
        except Exception as exc:  # noqa: BLE001 - tracking outages must not kill training
            log.warning("could not log epoch %d to MLflow: %s", epoch, exc)


def shard_arrays(shard) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A worker's shard as (features, target, weight) arrays."""
    parts = list(shard.iter_batches(batch_format="numpy", batch_size=None))
    if not parts:
        return np.empty((0, 0), np.float32), np.empty(0), np.empty(0)
    features = np.concatenate([np.asarray(p[FEATURES_COLUMN], np.float32) for p in parts])
    return (
        features,
        np.concatenate([p[TARGET_COLUMN] for p in parts]),
        np.concatenate([p[SAMPLE_WEIGHT_COLUMN] for p in parts]),
    )
