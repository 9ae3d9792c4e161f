"""What every family's Ray Train run shares: where checkpoints go (with the configured storage
options), workers and their resources, fault tolerance, which validation metric decides, and the
per-report MLflow log from rank 0 (Ray Train V2 has no MLflow callback)."""

from __future__ import annotations

import logging
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import TypeVar

import numpy as np
import ray
from ray.train import Checkpoint, CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

from pipelines.adapters import delta
from pipelines.core import metrics
from pipelines.core.config import LakeloopConfig
from pipelines.training.features import FEATURES_COLUMN, SAMPLE_WEIGHT_COLUMN, TARGET_COLUMN

log = logging.getLogger("lakeloop.training")


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


def workers(config: LakeloopConfig, datasets: dict) -> int:
    """train.num_workers, or fewer for a small training split: one per train.rows_per_worker rows. Each
    worker is a process of its own, and with one the split coordinator is not needed either (a
    20,000-row fit: 11.0 s on Ray Train's 1-worker group with it, 9.5 s without; 0.3 s of it boosting)."""
    rows = datasets["train"].count()
    return max(1, min(config.train.num_workers, math.ceil(rows / config.train.rows_per_worker)))


def in_process(
    config: LakeloopConfig, datasets: dict, callbacks: list | None = None, num_workers: int | None = None
) -> bool:
    """Whether a run of one worker goes through Ray Train's local mode (ScalingConfig(num_workers=0)):
    the train function runs in this process, with no controller, worker, placement group or dataset
    manager processes to start. Ray Train's run of a 5,000-row xgboost fit on a quiet stack: 9.0 s
    through a 1-worker group, of which the train function 0.6 s; 0.6 s in local mode, the same model
    (tests/integration/test_training.py). Local mode runs no RunConfig callbacks (a Tune trial keeps
    its worker group), holds no GPU, and has no worker to restart: a failure fails the run (the
    monitor retries a failed retraining job). Only for a training split of at most
    train.local_mode_rows rows, where starting the processes is most of the fit."""
    return (
        (num_workers or workers(config, datasets)) == 1
        and not callbacks
        and not config.train.use_gpu
        and datasets["train"].count() <= config.train.local_mode_rows
    )


def data_config(num_workers: int) -> DataConfig:
    """Several workers split the training split between them; every worker sees the whole (small)
    validation split, so validation metrics agree across ranks."""
    return DataConfig(datasets_to_split=["train"] if num_workers > 1 else [])


def scaling_config(config: LakeloopConfig, num_workers: int) -> ScalingConfig:
    """num_workers 0: local mode (in_process)."""
    train = config.train
    if num_workers == 0:
        return ScalingConfig(num_workers=0)
    return ScalingConfig(
        num_workers=num_workers,
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


Loaded = TypeVar("Loaded")

# In a loop's config: the run's folder for its checkpoints, removed after the run. A worker group
# uploads each checkpoint to storage and Ray deletes its folder, but a killed worker's checkpoints still
# waiting to upload stayed behind (14 folders of 0.5 MB per kill test); local mode uploads nothing.
# None in a Tune trial's config (`run` says why).
SCRATCH_KEY = "checkpoint_scratch"


def checkpoint_directory(cfg: dict) -> Path:
    """A new folder for a checkpoint the loop is about to report, in the run's folder (made here on a
    worker's node where the driver's is not: that node keeps the empty folder)."""
    scratch = cfg.get(SCRATCH_KEY)
    if scratch:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="lakeloop-checkpoint-", dir=scratch))


def run(
    trainer_class: type,
    train_loop_per_worker,
    cfg: dict,
    config: LakeloopConfig,
    datasets: dict,
    name: str,
    load: Callable[[Checkpoint], Loaded],
    callbacks: list | None = None,
    num_workers: int | None = None,
) -> tuple[Loaded, int]:
    """One run of a Ray Train trainer (TorchTrainer, XGBoostTrainer, DataParallelTrainer) over the train
    and validation splits: its last checkpoint as `load` reads it, and the epoch (or report) it resumed
    from after a failure."""
    count = num_workers or workers(config, datasets)
    if in_process(config, datasets, callbacks, count):
        count = 0
    # The run's folder is removed once the run is over: by then every upload has finished
    # (ignore_cleanup_errors: a folder Ray deletes as the removal walks the tree). A Tune trial's
    # process is ended before its run returns (a search of 4 trials left 4 folders), so a trial's
    # checkpoints go to the temporary directory itself, where Ray deletes each once it is uploaded.
    folder = (
        nullcontext(None)
        if callbacks
        else tempfile.TemporaryDirectory(prefix="lakeloop-fit-", ignore_cleanup_errors=True)
    )
    with folder as scratch:
        cfg = {**cfg, SCRATCH_KEY: scratch}
        trainer = trainer_class(
            train_loop_per_worker,
            train_loop_config=cfg,
            scaling_config=scaling_config(config, count),
            run_config=run_config(config, name, callbacks),
            datasets={"train": datasets["train"], "validation": datasets["validation"]},
            dataset_config=data_config(count),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"training run {name} finished without a checkpoint")
        return load(result.checkpoint), int((result.metrics or {}).get("resumed_from_epoch", 0))


def monitor_metric(config: LakeloopConfig) -> tuple[str, str]:
    """The validation metric that drives early stopping and Tune: the gate's metric."""
    return f"val_{config.gate.metric}", "max" if metrics.greater_is_better(config.gate.metric) else "min"


def improved(value: float, best: float | None, mode: str) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best + 1e-6 if mode == "max" else value < best - 1e-6)


WORKER_NODE_TAG = "lakeloop.worker_node."  # + rank: the Ray node each rank trained on


def epoch_logger(cfg: dict, rank: int) -> EpochLogger:
    """The run's logger for this rank: every rank tags the node it trains on (the workflow joins them
    in rank order); rank 0 also logs the reports."""
    logger = EpochLogger(cfg.get("tracking_uri"), cfg.get("mlflow_run_id"))
    logger.tag(f"{WORKER_NODE_TAG}{rank}", ray.get_runtime_context().get_node_id())
    return logger


def worker_nodes(tags: dict[str, str]) -> list[str]:
    """The nodes of a run's ranks, in rank order, from its tags."""
    ranks = {int(k.removeprefix(WORKER_NODE_TAG)): v for k, v in tags.items() if k.startswith(WORKER_NODE_TAG)}
    return [ranks[r] for r in sorted(ranks)]


class EpochLogger:
    """Per-report metrics and tags to an MLflow run, from a worker, sent by a background thread: a
    report does not wait for the tracking server (a synchronous log_batch per report made xgboost's
    fast reports wait on HTTP), and a tracking outage never stops training. `close()` sends what is
    queued (the loops call it when they end). MLflow is imported only when there is a run to log to."""

    def __init__(self, tracking_uri: str | None, run_id: str | None) -> None:
        self.run_id = run_id
        self._queue: queue.Queue = queue.Queue()
        self._thread = None
        if run_id:
            self._thread = threading.Thread(target=self._send, args=(tracking_uri,), daemon=True)
            self._thread.start()

    def tag(self, key: str, value: str) -> None:
        if self.run_id:
            self._queue.put(("tag", key, value))

    def log(self, report: dict, epoch: int) -> None:
        if self.run_id:
            now = int(time.time() * 1000)
            values = {k: float(v) for k, v in report.items() if isinstance(v, int | float) and k not in SKIPPED}
            self._queue.put(("metrics", {k: v for k, v in values.items() if math.isfinite(v)}, (now, epoch)))

    def close(self, timeout_s: float = 30) -> None:
        if self._thread:
            self._queue.put(None)
            self._thread.join(timeout_s)

    def _send(self, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(tracking_uri)
        while (item := self._queue.get()) is not None:
            try:
                if item[0] == "tag":
                    client.set_tag(self.run_id, item[1], item[2])
                else:
                    (now, step) = item[2]
                    client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in item[1].items()])
            except Exception as exc:  # noqa: BLE001 - tracking outages must not kill training
                log.warning("could not log to the MLflow run %s: %s", self.run_id, exc)


SKIPPED = ("done", "epoch_started_at")  # report fields that are not metrics


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
