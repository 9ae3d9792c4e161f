"""Model families behind one interface: every kind (mlp, xgboost, torch, sklearn) trains through Ray
Train on the same prepared splits and returns a `Trained` estimator, so preprocessing, lineage, the
MLflow run, the gate, the pyfunc, Serve, batch inference, the drift detectors and retraining are the
same for all of them. The search (pipelines.training.search) samples families through here."""

from __future__ import annotations

import importlib
import math
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pipelines.core.config import LakeloopConfig
from pipelines.core.estimators import Trained
from pipelines.training import ray_train

if TYPE_CHECKING:
    from ray.train import Checkpoint

    from pipelines.training.features import FeaturePipeline

# Each kind's module (its `fit` and `trained_from`), imported when the kind is used: importing torch
# took 1.1 s of every xgboost retraining job's start here, and that job never needs it.
MODULES = {
    "mlp": "pipelines.training.torch_loop",
    "torch": "pipelines.training.torch_loop",
    "xgboost": "pipelines.training.xgboost_loop",
    "sklearn": "pipelines.training.sklearn_fit",
}


# Kinds whose fit, once their module is imported, imports nothing in the driver while Ray Train runs
# (checked by listing sys.modules around the fit): the driver may import something else meanwhile.
# The torch kinds import torch.utils.serialization as results come back, sklearn its estimator's modules.
QUIET_DRIVER_KINDS = frozenset({"xgboost"})


def driver_quiet_while_fitting(config: LakeloopConfig, family: str, datasets: dict) -> bool:
    """A fit in Ray Train's local mode runs in the driver itself, importing as it goes: never quiet."""
    if config.train.families[family].kind not in QUIET_DRIVER_KINDS:
        return False
    return not ray_train.in_process(config, datasets)


def family_module(config: LakeloopConfig, family: str) -> ModuleType:
    """The module that trains `family` (imported on first use)."""
    return importlib.import_module(MODULES[config.train.families[family].kind])


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
    trainer = family_module(config, family).fit
    return trainer(config, family, spec.settings(overrides), datasets, pipeline, run_id, name, callbacks)


def fit_configured(config: LakeloopConfig, datasets: dict, pipeline: FeaturePipeline, run_id: str) -> Trained:
    """The plain `lakeloop train`: train.family with its params."""
    return fit(config, config.train.family, datasets, pipeline, run_id, name=f"train-{run_id[:8]}")


def trained_from(config: LakeloopConfig, family: str, settings: dict, checkpoint: Checkpoint) -> Trained:
    return family_module(config, family).trained_from(checkpoint, family, settings)


def reports(config: LakeloopConfig, family: str) -> int:
    """How many reports a full run of the family makes (ASHA's time unit): epochs, boosting reports, one fit."""
    spec = config.train.families[family]
    if spec.kind == "xgboost":
        settings = spec.settings()
        return math.ceil(settings["max_rounds"] / settings["rounds_per_report"])
    return 1 if spec.kind == "sklearn" else config.train.max_epochs
