"""Which fits run in Ray Train's local mode (in the training process) and which start a worker group."""

from __future__ import annotations

import pytest

from pipelines.core.config import parse_config
from pipelines.training.ray_train import in_process


class Rows:
    """A split as in_process reads it: its row count."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def count(self) -> int:
        return self.rows


def _decide(raw_config: dict, rows: int, workers: int = 1, callbacks: list | None = None, **train) -> bool:
    raw_config["train"].update(train)
    return in_process(parse_config(raw_config), {"train": Rows(rows)}, callbacks, num_workers=workers)


def test_a_small_split_fitted_by_one_worker_runs_in_process(raw_config: dict) -> None:
    assert _decide(raw_config, 5_000, local_mode_rows=50_000)
    assert _decide(raw_config, 50_000, local_mode_rows=50_000)


@pytest.mark.parametrize(
    ("rows", "workers", "callbacks", "train"),
    [
        (50_001, 1, None, {}),  # a split past the limit: starting processes is a small part of its fit
        (5_000, 2, None, {}),  # data-parallel workers
        (5_000, 1, ["tune's report callback"], {}),  # local mode runs no RunConfig callbacks
        (5_000, 1, None, {"use_gpu": True}),  # the training process holds no GPU
        (5_000, 1, None, {"local_mode_rows": 0}),  # turned off
    ],
)
def test_everything_else_starts_a_worker_group(
    raw_config: dict, rows: int, workers: int, callbacks: list | None, train: dict
) -> None:
    assert not _decide(raw_config, rows, workers, callbacks, **{"local_mode_rows": 50_000, **train})
