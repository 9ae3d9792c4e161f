"""Model families behind one interface: every kind (mlp, xgboost, torch, sklearn) trains through Ray
Train on the same prepared splits and returns a `Trained` estimator, so preprocessing, lineage, the
MLflow run, the gate, the pyfunc, Serve, batch inference, the drift detectors and retraining are the
same for all of them. The search (pipelines.training.search) samples families through here."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.train import Checkpoint

from pipelines.core.config import LakeloopConfig
from pipelines.core.estimators import Trained
from pipelines.training import sklearn_fit, torch_loop, xgboost_loop
from pipelines.training.features import FeaturePipeline

Fit = Callable[..., Trained]
TRAINERS: dict[str, Fit] = {
    "mlp": torch_loop.fit,
    "torch": torch_loop.fit,
    "xgboost": xgboost_loop.fit,
    "sklearn": sklearn_fit.fit,
}
FROM_CHECKPOINT: dict[str, Callable[[Checkpoint, str, dict], Trained]] = {
    "mlp": torch_loop.trained_from,
    "torch": torch_loop.trained_from,
    "xgboost": xgboost_loop.trained_from,
    "sklearn": sklearn_fit.trained_from,
}


def fit(
    config: LakeloopConfig,
    family: str,
    datasets: dict,
    pipeline: FeaturePipeline,
    run_id: str | None,
    name: str,
    overrides: dict[str, Any] | None = None,
    callbacks: list | None = None,
) -> Trained:
    """Train `family` with its configured params (and `overrides`: a Tune trial's)."""
    spec = config.train.families[family]
    return TRAINERS[spec.kind](config, family, spec.settings(overrides), datasets, pipeline, run_id, name, callbacks)


def fit_configured(config: LakeloopConfig, datasets: dict, pipeline: FeaturePipeline, run_id: str) -> Trained:
    """The plain `lakeloop train`: train.family with its params."""
    return fit(config, config.train.family, datasets, pipeline, run_id, name=f"train-{run_id[:8]}")


def trained_from(config: LakeloopConfig, family: str, settings: dict, checkpoint: Checkpoint) -> Trained:
    return FROM_CHECKPOINT[config.train.families[family].kind](checkpoint, family, settings)


def reports(config: LakeloopConfig, family: str) -> int:
    """How many reports a full run of the family makes (ASHA's time unit): epochs, boosting reports, one fit."""
    spec = config.train.families[family]
    if spec.kind == "xgboost":
        settings = spec.settings()
        return math.ceil(settings["max_rounds"] / settings["rounds_per_report"])
    return 1 if spec.kind == "sklearn" else config.train.max_epochs
