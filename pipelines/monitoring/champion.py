"""The champion the monitor checks against: which version, the test scores it was promoted with and
the regime it was trained for (from its training run), and, for a pass, its model and drift detectors
(stored with the training run)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.adapters.registry import Registry
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.core.retraining_policy import Regime
from pipelines.training.detectors import DRIFT_ARTIFACT, DriftSuite


@dataclass
class ChampionInfo:
    name: str
    version: str
    run_id: str
    test_metrics: dict[str, float]  # logged by the training run: the performance-drift reference
    regime: Regime  # the rows since a drift it was trained for (no start: all rows)


@dataclass
class Champion(ChampionInfo):
    suite: DriftSuite | None = None  # the model and its detectors


def champion_info(config: LakeloopConfig, registry: Registry | None = None) -> ChampionInfo:
    """The champion's version and its training run's scores and regime (registry calls only)."""
    registry = registry or Registry.from_config(config)
    ref = registry.resolve("champion")
    if ref is None:
        raise LakeloopError(f"model '{config.mlflow.registered_model}' has no champion to monitor yet")
    run = registry.run(ref.run_id)
    test_metrics = {k.removeprefix("test_"): v for k, v in run.data.metrics.items() if k.startswith("test_")}
    params = run.data.params
    regime = Regime(params.get("split_regime_start"), int(params.get("split_regime_rows") or 0))
    return ChampionInfo(ref.name, ref.version, ref.run_id, test_metrics, regime)


def load_champion(config: LakeloopConfig) -> Champion:
    """The champion with its model and drift detectors, for a monitor pass."""
    registry = Registry.from_config(config)
    info = champion_info(config, registry)
    model = registry.load_version(info.version)
    suite = DriftSuite.load(registry.download(info.run_id, DRIFT_ARTIFACT), model)
    return Champion(**vars(info), suite=suite)
