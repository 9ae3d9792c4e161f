"""The xgboost family on Ray Train's XGBoostTrainer: data-parallel gradient-boosted trees (each
worker holds a shard of the training split; xgboost's collective allreduces the histograms), the
encoded matrix with each categorical slot a native categorical feature, early stopping on the
validation split, a checkpoint every `rounds_per_report` rounds (a worker killed mid-training resumes
from the last one), then (`refit`) the chosen number of rounds boosted again on the training and
validation rows together, and the GPU when train.use_gpu is set."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import ray.train
import xgboost
from ray.train import Checkpoint, CheckpointUploadMode
from ray.train.xgboost import XGBoostTrainer

from pipelines.core import metrics
from pipelines.core.config import LakeloopConfig
from pipelines.core.estimators import Trained, XGBoostEstimator
from pipelines.training import ray_train
from pipelines.training.features import FeaturePipeline

BOOSTER_FILE, PROGRESS_FILE = "model.ubj", "progress.json"
# xgboost's own validation metric for early stopping (computed incrementally each round), per gate
# metric. Every classification metric stops on log loss: a proper score, smooth from round to round.
# Stopping on AUC or error, steps on a validation split of 75-600 rows, picked 2-10 rounds and
# underfit: in the learning curve (churn, Agrawal, SEA at 500-4,000 rows since a change) accuracy rose
# by up to 0.05 (churn at 4,000 rows: 5 rounds and 0.805, now 43 and 0.856; docs/benchmarks.md).
# lakeloop's own metrics (the gate's among them) are reported every report.
STOPPING_METRIC = {
    "roc_auc": "logloss",
    "accuracy": "logloss",
    "log_loss": "logloss",
    "f1": "logloss",
    "rmse": "rmse",
    "mae": "mae",
    "r2": "rmse",
}


def _matrix(features: np.ndarray, target: np.ndarray, weight: np.ndarray | None, cfg: dict) -> xgboost.DMatrix:
    numeric, slots = cfg["layout"]
    types = ["q"] * numeric + ["c"] * len(slots)
    return xgboost.DMatrix(features, target, weight=weight, feature_types=types, enable_categorical=True)


def stopping_metric(gate_metric: str, classes: int) -> str:
    """xgboost's early-stopping metric for a gate metric (log loss is mlogloss beyond two classes)."""
    stopping = STOPPING_METRIC[gate_metric]
    return "mlogloss" if stopping == "logloss" and classes > 2 else stopping


def booster_params(cfg: dict) -> dict:
    settings, task, classes = cfg["settings"], cfg["task"], cfg["classes"]
    objective = (
        {"objective": "reg:squarederror"}
        if task == "regression"
        else {"objective": "binary:logistic"}
        if classes == 2
        else {"objective": "multi:softprob", "num_class": classes}
    )
    return {
        **objective,
        "eval_metric": stopping_metric(cfg["gate_metric"], classes),
        "tree_method": "hist",
        "device": "cuda" if cfg["use_gpu"] else "cpu",
        "grow_policy": "lossguide",
        "seed": cfg["seed"],
        "nthread": cfg["threads"],
        "max_bin": 256,
        **{k: settings[k] for k in XGBOOST_KEYS},
    }


XGBOOST_KEYS = (
    "eta",
    "max_leaves",
    "max_depth",
    "min_child_weight",
    "subsample",
    "colsample_bytree",
    "reg_lambda",
    "max_cat_to_onehot",
)


class _Progress(xgboost.callback.TrainingCallback):
    """Early stopping on xgboost's validation metric (each in STOPPING_METRIC is a loss), and every
    `rounds_per_report` rounds (and at the end) lakeloop's metrics on the validation split, reported to
    Ray Train with a checkpoint."""

    def __init__(self, cfg: dict, validation: xgboost.DMatrix, target: np.ndarray, state: dict, rank: int) -> None:
        self.cfg, self.validation, self.target, self.state, self.rank = cfg, validation, target, state, rank
        self.logger = ray_train.epoch_logger(cfg, rank)
        self.started = time.perf_counter()
        self.pending: dict | None = None  # the last report, held for the refitted booster

    def after_iteration(self, model: xgboost.Booster, epoch: int, evals_log: dict) -> bool:
        score = float(evals_log["validation"][self.cfg["stopping_metric"]][-1])
        state, rounds = self.state, model.num_boosted_rounds()
        if state["best"] is None or score < state["best"]:
            state.update(best=score, best_rounds=rounds, stale=0)
        else:
            state["stale"] += 1
        done = state["stale"] >= self.cfg["settings"]["early_stopping_rounds"] or rounds >= self.cfg["max_rounds"]
        if done or rounds % self.cfg["settings"]["rounds_per_report"] == 0:
            self._report(model, rounds, done)
        return done

    def _report(self, model: xgboost.Booster, rounds: int, done: bool) -> None:
        predictions = model.predict(self.validation, iteration_range=(0, rounds))
        cfg, state = self.cfg, self.state
        if cfg["task"] == "regression":
            scores = metrics.regression(self.target, predictions)
        else:
            probabilities = predictions if predictions.ndim == 2 else np.column_stack([1 - predictions, predictions])
            scores = metrics.classification(self.target.astype(np.int64), probabilities)
        epoch = len(state["history"])
        report = {
            "epoch": epoch,
            "rounds": rounds,
            "best_rounds": state["best_rounds"],
            **{f"val_{k}": v for k, v in scores.items()},
            "train_seconds": time.perf_counter() - self.started,
            "resumed_from_epoch": state["resumed_from_epoch"],
            "done": done,
        }
        state["history"].append({k: v for k, v in report.items() if k != "done"})
        if done and refits(cfg, self.target):
            # the last report goes out with the refitted booster (one report less: each waits for the
            # controller's poll); a worker killed during the refit resumes from the report before
            self.pending = report
            return
        self._send(report, model, epoch)

    def report_refit(self, model: xgboost.Booster) -> None:
        """The last report, with the refitted booster: the early-stopped model's validation metrics
        (the refit has seen these rows) and the refit's round count."""
        history = self.state["history"]
        report = self.pending or {**(history[-1] if history else {}), "done": True}
        self._send({**report, "refit_rounds": self.state["refit_rounds"]}, model, report.get("epoch", len(history)))

    def _send(self, report: dict, model: xgboost.Booster, epoch: int) -> None:
        checkpoint = None
        if self.rank == 0:
            directory = ray_train.checkpoint_directory(self.cfg)
            model.save_model(directory / BOOSTER_FILE)
            (directory / PROGRESS_FILE).write_text(_dump_progress(self.state))
            checkpoint = Checkpoint.from_directory(str(directory))
        ray.train.report(report, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)
        if self.rank == 0:
            self.logger.log(report, epoch)
        self.started = time.perf_counter()


def _dump_progress(state: dict) -> str:
    return json.dumps({k: v for k, v in state.items() if k != "resumed_from_epoch"})


def _load(checkpoint: Checkpoint) -> tuple[xgboost.Booster, dict]:
    with checkpoint.as_directory() as directory:
        booster = xgboost.Booster()
        booster.load_model(Path(directory) / BOOSTER_FILE)
        progress = json.loads((Path(directory) / PROGRESS_FILE).read_text())
    return booster, progress


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every worker; resumes from the latest checkpoint after a failure."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    features, target, weight = ray_train.shard_arrays(ray.train.get_dataset_shard("train"))
    val_features, val_target, val_weight = ray_train.shard_arrays(ray.train.get_dataset_shard("validation"))
    train = _matrix(features, target, weight, cfg)
    validation = _matrix(val_features, val_target, None, cfg)
    state = {
        "best": None,
        "best_rounds": 0,
        "stale": 0,
        "history": [],
        "resumed_from_epoch": 0,
        "refit_rounds": 0,
        "task": cfg["task"],
        "classes": cfg["classes"],
    }
    booster = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        booster, progress = _load(checkpoint)
        state = {**state, **progress, "resumed_from_epoch": len(progress["history"])}
    progress = _Progress(cfg, validation, val_target, state, rank)
    try:
        if not _stopped(cfg, state, booster):
            booster = xgboost.train(
                booster_params(cfg),
                train,
                num_boost_round=cfg["max_rounds"] - (booster.num_boosted_rounds() if booster else 0),
                evals=[(validation, "validation")],
                xgb_model=booster,
                callbacks=[progress],
                verbose_eval=False,
            )
        if refits(cfg, val_target) and not state["refit_rounds"]:
            # every rank sees the whole validation split: each adds its own stripe of it
            stripe = slice(rank, None, context.get_world_size())
            together = _matrix(
                np.concatenate([features, val_features[stripe]]),
                np.concatenate([target, val_target[stripe]]),
                np.concatenate([weight, val_weight[stripe]]),
                cfg,
            )
            rounds = max(state["best_rounds"], 1)
            refitted = xgboost.train(booster_params(cfg), together, num_boost_round=rounds, verbose_eval=False)
            state["refit_rounds"] = rounds
            progress.report_refit(refitted)
    finally:
        progress.logger.close()


def refits(cfg: dict, validation_target: np.ndarray) -> bool:
    return bool(cfg["settings"]["refit"]) and len(validation_target) > 0


def _stopped(cfg: dict, state: dict, booster: xgboost.Booster | None) -> bool:
    """Whether a resumed run had already finished boosting (early stopping or max_rounds)."""
    if booster is None:
        return False
    return (
        booster.num_boosted_rounds() >= cfg["max_rounds"] or state["stale"] >= cfg["settings"]["early_stopping_rounds"]
    )


def loop_config(
    config: LakeloopConfig, settings: dict, pipeline: FeaturePipeline, run_id: str | None, threads: int
) -> dict:
    return {
        "settings": settings,
        "layout": pipeline.layout,
        "task": config.dataset.task,
        "classes": len(config.dataset.classes or []),
        "gate_metric": config.gate.metric,
        "stopping_metric": stopping_metric(config.gate.metric, len(config.dataset.classes or [])),
        "max_rounds": settings["max_rounds"],
        "seed": config.train.seed,
        "use_gpu": config.train.use_gpu,
        "threads": threads,
        "tracking_uri": config.mlflow.tracking_uri,
        "mlflow_run_id": run_id,
    }


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
    """One XGBoostTrainer run with these settings; with Tune's callback, one trial. The model is the
    booster cut at its best round."""
    threads = max(1, math.floor(config.train.cpus_per_worker)) if not config.train.use_gpu else 1
    cfg = loop_config(config, settings, pipeline, run_id, threads)
    load = lambda checkpoint: trained_from(checkpoint, family, settings)
    trained, resumed = ray_train.run(
        XGBoostTrainer, train_loop_per_worker, cfg, config, datasets, name, load, callbacks
    )
    trained.resumed_from_epoch = resumed
    return trained


def trained_from(checkpoint: Checkpoint, family: str, settings: dict) -> Trained:
    """The booster in a checkpoint (whose progress names the task): the refitted one, or the
    early-stopped one cut at its best round."""
    booster, progress = _load(checkpoint)
    best = booster if progress.get("refit_rounds") else booster[: max(progress["best_rounds"], 1)]
    estimator = XGBoostEstimator(family, best.save_raw("ubj"), progress["task"], progress["classes"])
    return Trained(estimator, progress["history"], 0, settings)
