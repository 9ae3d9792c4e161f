"""The champion the monitor checks against: its model, its drift detectors (stored with the
training run) and the test scores it was promoted with."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.adapters.registry import Registry
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.training.detectors import DRIFT_ARTIFACT, DriftSuite


@dataclass
class Champion:
    name: str
    version: str
    run_id: str
    suite: DriftSuite
    test_metrics: dict[str, float]  # logged by the training run: the performance-drift reference


def load_champion(config: LakeloopConfig) -> Champion:
    registry = Registry.from_config(config)
    ref = registry.resolve("champion")
    if ref is None:
        raise LakeloopError(f"model '{config.mlflow.registered_model}' has no champion to monitor yet")
    model = registry.load(ref)
    directory = registry.download(ref.run_id, DRIFT_ARTIFACT)
    logged = registry.run_metrics(ref.run_id)
    test_metrics = {k.removeprefix("test_"): v for k, v in logged.items() if k.startswith("test_")}
    return Champion(ref.name, ref.version, ref.run_id, DriftSuite.load(directory, model), test_metrics)
