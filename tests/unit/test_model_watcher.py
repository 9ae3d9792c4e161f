"""The Serve app's model watcher with an injected source: no registry, no Serve."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from pipelines.adapters.registry import ModelRef
from pipelines.core.config import LakeloopConfig
from pipelines.core.model_output import Scored
from serve.app import INLINE_ROWS, LoadedModel, ModelWatcher, _predict, _warm_up
from tests.fakes import FakePredictor, FakeSource


@pytest.fixture
def watcher(config: LakeloopConfig):
    slow = config.model_copy(update={"serving": config.serving.model_copy(update={"poll_interval_s": 3600})})
    source = FakeSource()
    watcher = ModelWatcher(source, slow)  # first check runs on its thread right away
    for _ in range(100):
        if watcher.current:
            break
        time.sleep(0.02)
    yield watcher, source
    watcher.stop()


def test_loads_the_alias_then_swaps_when_it_moves(watcher) -> None:
    watcher, source = watcher
    assert watcher.current.ref.version == "1"
    assert watcher.check() is False  # unchanged alias: nothing reloaded
    source.version = "2"
    assert watcher.check() is True
    assert watcher.current.ref.version == "2"
    assert source.loads == ["1", "2"]


def test_registry_outage_keeps_the_current_model(watcher) -> None:
    watcher, source = watcher
    source.down = True
    assert watcher.check() is False
    assert watcher.current.ref.version == "1"
    assert "mlflow unreachable" in watcher.last_error
    source.down, source.version = False, "3"
    assert watcher.check() is True  # retried on the next poll
    assert watcher.last_error is None


def test_a_version_that_fails_warmup_is_never_swapped_in(watcher) -> None:
    watcher, source = watcher
    source.version = "4"
    source.broken_versions.add("4")
    assert watcher.check() is False
    assert watcher.current.ref.version == "1"
    assert "cannot score" in watcher.last_error


class SlowPredictor(FakePredictor):
    def predict_columns(self, columns: dict[str, np.ndarray]) -> Scored:
        time.sleep(0.003)  # a model that takes 3 ms a row (not synchronisation)
        return super().predict_columns(columns)


class ThreadRecorder(FakePredictor):
    def __init__(self) -> None:
        super().__init__("1")
        self.threads: list[int] = []

    def predict_columns(self, columns: dict[str, np.ndarray]) -> Scored:
        self.threads.append(threading.get_ident())
        return super().predict_columns(columns)


def test_a_fast_model_scores_small_batches_on_the_event_loop_and_the_rest_in_a_thread(config: LakeloopConfig) -> None:
    assert _warm_up(FakePredictor("1"), config) == INLINE_ROWS
    assert _warm_up(SlowPredictor("1"), config) == 0
    recorder = ThreadRecorder()
    model = LoadedModel(ModelRef("m", "1", "champion", "run"), recorder, "now", INLINE_ROWS)

    async def score() -> int:
        await _predict(model, {"x": np.zeros(INLINE_ROWS)})
        await _predict(model, {"x": np.zeros(INLINE_ROWS + 1)})
        return threading.get_ident()

    loop_thread = asyncio.run(score())
    assert recorder.threads[0] == loop_thread and recorder.threads[1] != loop_thread
