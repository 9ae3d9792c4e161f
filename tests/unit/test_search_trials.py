"""A Tune trial's Train run: no worker-group restarts (a stopped trial must leave no reservation behind)."""

from __future__ import annotations

from pipelines.core.config import LakeloopConfig
from pipelines.training.search import without_worker_restarts


def test_a_trial_trains_without_restarting_its_workers_and_otherwise_as_configured(config: LakeloopConfig) -> None:
    assert config.train.max_failures > 0
    trial = without_worker_restarts(config)
    assert trial.train.max_failures == 0
    assert trial.model_copy(update={"train": config.train}) == config
