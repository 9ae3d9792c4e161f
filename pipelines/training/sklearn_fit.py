"""The sklearn family: any estimator with the scikit-learn API (the user's `class_path`, built with
`params`), fitted on one Ray Train worker on the whole training split, and scored on the validation
split with lakeloop's metrics. It has no epochs: one report, one checkpoint (the pickled estimator);
a worker that dies is restarted and fits again."""

from __future__ import annotations

import inspect
import pickle
import time
from pathlib import Path

import numpy as np
import ray.train
from ray.train import Checkpoint
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

from pipelines.core import metrics
from pipelines.core.config import LakeloopConfig
from pipelines.core.estimators import SklearnEstimator, Trained
from pipelines.core.feature_transform import onehot
from pipelines.core.module_spec import load_class
from pipelines.training import ray_train
from pipelines.training.features import FeaturePipeline

ESTIMATOR_FILE = "estimator.pkl"


def _fitted(cfg: dict, features: np.ndarray, target: np.ndarray, weight: np.ndarray):
    estimator = load_class(cfg["class_path"])(**cfg["params"])
    if "sample_weight" in inspect.signature(estimator.fit).parameters and not np.allclose(weight, 1.0):
        return estimator.fit(features, target, sample_weight=weight)
    return estimator.fit(features, target)


def train_loop_per_worker(cfg: dict) -> None:
    logger = ray_train.epoch_logger(cfg, 0)
    features, target, weight = ray_train.shard_arrays(ray.train.get_dataset_shard("train"))
    val_features, val_target, _ = ray_train.shard_arrays(ray.train.get_dataset_shard("validation"))
    if cfg["encoding"] == "onehot":
        features, val_features = onehot(features, *cfg["layout"]), onehot(val_features, *cfg["layout"])
    started = time.perf_counter()
    estimator = SklearnEstimator(
        cfg["family"], _fitted(cfg, features, target, weight), cfg["task"], cfg["classes"], cfg["encoding"]
    )
    outputs = estimator.outputs(val_features)
    scores = (
        metrics.regression(val_target, outputs)
        if cfg["task"] == "regression"
        else metrics.classification(val_target.astype(np.int64), outputs)
    )
    report = {"epoch": 0, **{f"val_{k}": v for k, v in scores.items()}, "train_seconds": time.perf_counter() - started}
    directory = ray_train.checkpoint_directory(cfg)
    (directory / ESTIMATOR_FILE).write_bytes(pickle.dumps((estimator, [report])))
    ray.train.report(report, checkpoint=Checkpoint.from_directory(str(directory)))
    logger.log(report, 0)
    logger.close()


def fit(
    config: LakeloopConfig,
    family: str,
    settings: dict,
    datasets: dict,
    pipeline: FeaturePipeline,
    run_id: str | None,
    name: str,
    callbacks: list | None = None,
) -> Trained:
    spec = config.train.families[family]
    cfg = {
        "family": family,
        "class_path": spec.class_path,
        "params": settings,
        "encoding": spec.encoding or "onehot",
        "layout": pipeline.layout,
        "task": config.dataset.task,
        "classes": len(config.dataset.classes or []),
        "tracking_uri": config.mlflow.tracking_uri,
        "mlflow_run_id": run_id,
    }
    load = lambda checkpoint: trained_from(checkpoint, family, settings)
    trained, _ = ray_train.run(  # one worker: one estimator, fitted on the whole training split
        DataParallelTrainer, train_loop_per_worker, cfg, config, datasets, name, load, callbacks, num_workers=1
    )
    return trained


def trained_from(checkpoint: Checkpoint, family: str, settings: dict) -> Trained:
    with checkpoint.as_directory() as directory:
        estimator, history = pickle.loads((Path(directory) / ESTIMATOR_FILE).read_bytes())
    return Trained(estimator, history, 0, settings)
