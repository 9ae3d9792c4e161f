"""The champion the monitor checks against: its model, its drift detectors (stored with the
training run) and the test scores it was promoted with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    import mlflow

    registry = Registry.from_config(config)
    ref = registry.resolve("champion")
    if ref is None:
        raise LakeloopError(f"model '{config.mlflow.registered_model}' has no champion to monitor yet")
    model = registry.load(ref)
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    directory = mlflow.artifacts.download_artifacts(run_id=ref.run_id, artifact_path=DRIFT_ARTIFACT)
    logged = registry.client.get_run(ref.run_id).data.metrics
    test_metrics = {k.removeprefix("test_"): v for k, v in logged.items() if k.startswith("test_")}
    return Champion(ref.name, ref.version, ref.run_id, DriftSuite.load(Path(directory), model), test_metrics)
