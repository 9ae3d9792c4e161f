"""The training loop's batch loss: the plain mean when every row weighs the same, else weighted."""

from __future__ import annotations

import pytest
import torch

from pipelines.training.torch_loop import _weighted_mean


def test_equal_weights_give_the_weighted_loss_as_a_plain_mean() -> None:
    per_row, weight = torch.rand(64), torch.full((64,), 0.25)
    weighted = _weighted_mean(per_row, weight, {"uniform_weight": False, "weight_mean": 0.25})
    assert _weighted_mean(per_row, weight, {"uniform_weight": True, "weight_mean": 0.25}) == pytest.approx(
        float(weighted)
    )


def test_unequal_weights_are_normalised_by_the_split_mean_not_the_batch() -> None:
    per_row, weight = torch.tensor([1.0, 3.0]), torch.tensor([0.1, 0.1])  # a batch of old, down-weighted rows
    loss = _weighted_mean(per_row, weight, {"uniform_weight": False, "weight_mean": 0.55})
    assert float(loss) == pytest.approx((0.1 + 0.3) / (2 * 0.55))  # not 2.0, the batch's own weighted mean
