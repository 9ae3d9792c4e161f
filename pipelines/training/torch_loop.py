"""The torch families (`mlp`: lakeloop's MLP; `torch`: the user's nn.Module) on Ray Train's
TorchTrainer: DDP workers fed by Ray Data shards, checkpoints per epoch, early stopping on the gate's
validation metric. The shards hold the encoded matrix (one column per feature); each batch's
categorical slots become one-hot columns here, as the fitted model's `onehot` does at inference.

Metrics go to MLflow from rank 0 (Ray Train V2 has no MLflow callback); the driver keeps no state
that a restarted worker group needs: everything to resume lives in the checkpoint.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointUploadMode

from pipelines.core import metrics
from pipelines.core.config import FamilySpec, LakeloopConfig
from pipelines.core.estimators import TorchEstimator, Trained
from pipelines.core.module_spec import MLP_CLASS, ModuleSpec, output_dim
from pipelines.core.network import loss_function
from pipelines.training import ray_train
from pipelines.training.features import (
    FEATURES_COLUMN,
    SAMPLE_WEIGHT_COLUMN,
    TARGET_COLUMN,
    FeaturePipeline,
    fit_statistics,
)

STATE_FILE = "state.pt"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # features, target, sample weight


class ShardCache:
    """A worker's dataset shard: streamed from Ray Data in the first epoch and, when it has at most
    `limit` rows, kept as tensors for the epochs after (re-shuffled each epoch). Streaming a small
    tabular shard every epoch costs several times the model's own compute (benchmarks/training.py)."""

    def __init__(self, shard, limit: int) -> None:
        self.shard, self.limit = shard, limit
        self.cached: Batch | None = None

    def batches(self, batch_size: int, shuffle: bool = False):
        if self.cached is not None:
            order = torch.randperm(len(self.cached[1])) if shuffle else torch.arange(len(self.cached[1]))
            for index in order.split(batch_size):
                yield tuple(part[index] for part in self.cached)
            return
        kept: list[Batch] | None = []
        rows = 0
        for batch in self.shard.iter_torch_batches(batch_size=batch_size):
            triple = (batch[FEATURES_COLUMN], batch[TARGET_COLUMN], batch[SAMPLE_WEIGHT_COLUMN])
            rows += len(triple[1])
            if kept is not None and rows <= self.limit:
                kept.append(triple)
            else:
                kept = None  # too big: stream every epoch
            yield triple
        if kept:
            self.cached = tuple(torch.cat(parts) for parts in zip(*kept, strict=True))  # type: ignore[assignment]


class OneHot:
    """Encoded rows (numeric columns, then one slot per categorical) -> one column per slot, in torch."""

    def __init__(self, numeric: int, slots: list[int]) -> None:
        self.numeric, self.slots = numeric, slots
        self.offsets = [numeric + sum(slots[:i]) for i in range(len(slots))]
        self.width = numeric + sum(slots)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        expanded = torch.zeros((len(features), self.width), dtype=torch.float32)
        expanded[:, : self.numeric] = features[:, : self.numeric]
        for position, offset in enumerate(self.offsets):
            codes = features[:, self.numeric + position]
            hit = ~torch.isnan(codes)
            expanded[hit.nonzero(as_tuple=True)[0], offset + codes[hit].long()] = 1.0
        return expanded


def _standardised(target: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Classification: class indices; regression: the target in standard units (see ModuleSpec)."""
    if cfg["task"] == "classification":
        return target
    return (target.float() - cfg["module"]["target_shift"]) / cfg["module"]["target_scale"]


def _validate(model: torch.nn.Module, shard: ShardCache, cfg: dict, onehot: OneHot, loss_fn) -> dict[str, float]:
    model.eval()
    outputs, targets, total_loss, rows = [], [], 0.0, 0
    with torch.inference_mode():
        for features, target, _ in shard.batches(max(cfg["optimizer"]["batch_size"], 1024)):
            logits = model(onehot(features))
            standard = _standardised(target, cfg)
            prediction = logits if cfg["task"] == "classification" else logits[:, 0]
            total_loss += float(loss_fn(prediction, standard).mean()) * len(target)
            rows += len(target)
            outputs.append(logits.numpy())
            targets.append(target.numpy())
    logits_all, target_all = np.concatenate(outputs), np.concatenate(targets)
    if cfg["task"] == "classification":
        probabilities = torch.softmax(torch.from_numpy(logits_all), dim=1).numpy()
        scores = metrics.classification(target_all, probabilities)
    else:
        shift, scale = cfg["module"]["target_shift"], cfg["module"]["target_scale"]
        scores = metrics.regression(target_all, logits_all[:, 0] * scale + shift)
    return {"val_loss": total_loss / max(rows, 1), **{f"val_{k}": v for k, v in scores.items()}}


def _weighted_mean(per_row: torch.Tensor, weight: torch.Tensor, cfg: dict) -> torch.Tensor:
    """The batch's loss. Normalised by the whole split's mean weight, not the batch's: a worker whose
    shard holds only down-weighted older rows must not give them full strength (dividing by the batch's
    own weight did, and the candidate learned the old rule: 0.72 held-out accuracy against 0.83).
    With equal weights that is the plain mean, which skips three tensor ops a batch (in one process
    with alternating runs: +8-14% an epoch for the weighted form, nothing measurable for the mean)."""
    if cfg["uniform_weight"]:
        return per_row.mean()
    return (per_row * weight).sum() / (len(weight) * cfg["weight_mean"])


def train_loop_per_worker(cfg: dict) -> None:
    """Runs on every Ray Train worker; resumes from the latest checkpoint after a failure."""
    context = ray.train.get_context()
    rank = context.get_world_rank()
    hp = cfg["optimizer"]
    torch.manual_seed(cfg["seed"] + rank)

    model = ray.train.torch.prepare_model(ModuleSpec(**cfg["module"]).build())
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    onehot = OneHot(*cfg["layout"])
    state = {"epoch": 0, "best": None, "stale": 0, "history": [], "best_state": None, "resumed_from_epoch": 0}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            saved = torch.load(Path(directory) / STATE_FILE, weights_only=False)
        _unwrap(model).load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = {**saved["progress"], "resumed_from_epoch": saved["progress"]["epoch"]}

    logger = ray_train.epoch_logger(cfg, rank)
    try:
        _epochs(cfg, rank, model, optimizer, onehot, state, logger)
    finally:
        logger.close()


def _epochs(cfg: dict, rank: int, model, optimizer, onehot: OneHot, state: dict, logger: ray_train.EpochLogger) -> None:
    """Epochs until early stopping or max_epochs: train, validate, report (and checkpoint) each."""
    hp, monitor, mode = cfg["optimizer"], cfg["monitor"], cfg["mode"]
    loss_fn = loss_function(cfg["task"])
    train_shard = ShardCache(ray.train.get_dataset_shard("train"), cfg["cache_rows"])
    validation = ShardCache(ray.train.get_dataset_shard("validation"), cfg["cache_rows"])
    for epoch in range(state["epoch"], cfg["max_epochs"]):
        epoch_started, started_at = time.perf_counter(), time.time()
        model.train()
        running, seen = 0.0, 0
        for features, target, weight in train_shard.batches(hp["batch_size"], shuffle=True):
            target = _standardised(target, cfg)
            logits = model(onehot(features))
            per_row = loss_fn(logits if cfg["task"] == "classification" else logits[:, 0], target)
            loss = _weighted_mean(per_row, weight, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item() * len(target)
            seen += len(target)
        trained_at = time.perf_counter()
        report = {
            "epoch": epoch,
            "train_loss": running / max(seen, 1),
            **_validate(model, validation, cfg, onehot, loss_fn),
            "train_seconds": trained_at - epoch_started,
            "validate_seconds": time.perf_counter() - trained_at,
            "epoch_started_at": started_at,  # Unix time: epoch cadence, report and checkpoint included
        }
        if ray_train.improved(report[monitor], state["best"], mode):
            state.update(
                best=report[monitor], stale=0, best_state={k: v.clone() for k, v in _unwrap(model).state_dict().items()}
            )
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        state["history"].append(report)
        stop = state["stale"] >= cfg["patience"] or state["epoch"] >= cfg["max_epochs"]
        report.update(resumed_from_epoch=state["resumed_from_epoch"], done=stop)
        _report(report, rank, model, optimizer, state, cfg)
        if rank == 0:
            logger.log(report, epoch)
        if stop:
            break


def _report(report: dict, rank: int, model, optimizer, state: dict, cfg: dict) -> None:
    """Metrics from every rank, the checkpoint from rank 0, uploaded in the background (Ray then
    owns and deletes the local folder) so the next epoch need not wait for storage; local mode uploads
    nothing. Either way the folder is in the run's own (ray_train.run removes it after the run), but
    a Tune trial's is in the temporary directory, deleted by Ray once uploaded."""
    checkpoint = None
    if rank == 0:
        directory = ray_train.checkpoint_directory(cfg)
        progress = {k: v for k, v in state.items() if k != "resumed_from_epoch"}
        saved = {
            "model": _unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "progress": progress,
            "module": cfg["module"],
            "task": cfg["task"],
        }
        torch.save(saved, Path(directory) / STATE_FILE)
        checkpoint = Checkpoint.from_directory(directory)
    ray.train.report(report, checkpoint=checkpoint, checkpoint_upload_mode=CheckpointUploadMode.ASYNC)


@dataclass(frozen=True)
class TrainStats:
    """Of the whole (transformed) train split, for every worker alike."""

    mean_weight: float = 1.0  # 1 unless older rows were down-weighted
    uniform_weight: bool = True  # every row weighs the same (no drift regime): the loss is a plain mean
    target_shift: float = 0.0  # regression: the target's mean and SD (see NetworkSpec)
    target_scale: float = 1.0


def train_stats(train, task: str) -> TrainStats:
    """One Ray Data pass for all of them."""
    columns = [SAMPLE_WEIGHT_COLUMN] + ([TARGET_COLUMN] if task == "regression" else [])
    found = fit_statistics(train, columns, []).numeric
    weight, target = found[SAMPLE_WEIGHT_COLUMN], found.get(TARGET_COLUMN)
    sd = math.sqrt(target.m2 / (target.count - 1)) if target and target.count > 1 else 0.0
    return TrainStats(
        mean_weight=weight.mean if weight.count else 1.0,
        uniform_weight=weight.m2 <= 1e-12 * max(weight.count, 1),
        target_shift=target.mean if target else 0.0,
        target_scale=sd if math.isfinite(sd) and sd > 0 else 1.0,
    )


OPTIMIZER_KEYS = ("lr", "batch_size", "weight_decay")


def module_spec(spec: FamilySpec, settings: dict, pipeline: FeaturePipeline, stats: TrainStats) -> ModuleSpec:
    """lakeloop's MLP or the user's module (`class_path`), given the one-hot width and the settings
    that are not the optimiser's."""
    dataset = pipeline.dataset
    return ModuleSpec(
        class_path=MLP_CLASS if spec.kind == "mlp" else str(spec.class_path),
        input_dim=pipeline.onehot_width,
        output_dim=output_dim(dataset.task, dataset.classes),
        params={k: v for k, v in settings.items() if k not in OPTIMIZER_KEYS},
        target_shift=stats.target_shift,
        target_scale=stats.target_scale,
    )


def loop_config(
    config: LakeloopConfig,
    spec: FamilySpec,
    settings: dict,
    pipeline: FeaturePipeline,
    run_id: str | None,
    stats: TrainStats = TrainStats(),
) -> dict:
    monitor, mode = ray_train.monitor_metric(config)
    return {
        "optimizer": {k: settings[k] for k in OPTIMIZER_KEYS},
        "module": module_spec(spec, settings, pipeline, stats).to_dict(),
        "layout": pipeline.layout,
        "task": config.dataset.task,
        "monitor": monitor,
        "mode": mode,
        "seed": config.train.seed,
        "patience": config.train.patience,
        "cache_rows": config.train.cache_rows,
        "max_epochs": config.train.max_epochs,
        "weight_mean": stats.mean_weight,
        "uniform_weight": stats.uniform_weight,
        "tracking_uri": config.mlflow.tracking_uri,
        "mlflow_run_id": run_id,
    }


def trained_from(checkpoint: Checkpoint, family: str, settings: dict) -> Trained:
    """The best epoch's network in a checkpoint (which names its module and task), as the family's estimator."""
    with checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / STATE_FILE, weights_only=False)
    progress = saved["progress"]
    best = progress["best_state"] or saved["model"]
    estimator = TorchEstimator(family, ModuleSpec(**saved["module"]), best, saved["task"])
    return Trained(estimator, progress["history"], 0, settings)


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
    """One TorchTrainer run of a torch family with these settings; with Tune's callback, one trial."""
    spec = config.train.families[family]
    cfg = loop_config(config, spec, settings, pipeline, run_id, train_stats(datasets["train"], config.dataset.task))
    trainer = ray.train.torch.TorchTrainer
    load = lambda checkpoint: trained_from(checkpoint, family, settings)
    trained, resumed = ray_train.run(trainer, train_loop_per_worker, cfg, config, datasets, name, load, callbacks)
    trained.resumed_from_epoch = resumed
    return trained
