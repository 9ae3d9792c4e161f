"""The network's head: regression answers in the label's units around the training target's mean."""

from __future__ import annotations

import torch

from pipelines.core.network import NetworkSpec, TabularMLP


def _zeroed(spec: NetworkSpec) -> TabularMLP:
    model = TabularMLP(spec)
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    return model


def test_an_untrained_regression_network_starts_at_the_target_mean() -> None:
    spec = NetworkSpec(input_dim=3, output_dim=1, hidden=4, depth=1, dropout=0.0, target_shift=70.0, target_scale=23.0)
    assert torch.allclose(_zeroed(spec)(torch.ones(2, 3)), torch.full((2, 1), 70.0))


def test_the_target_scale_multiplies_what_the_network_learns() -> None:
    spec = NetworkSpec(input_dim=2, output_dim=1, hidden=2, depth=0, dropout=0.0, target_shift=10.0, target_scale=5.0)
    model = _zeroed(spec)
    model.net[-1].bias.data.fill_(1.0)  # one standard deviation above the mean
    assert torch.allclose(model(torch.zeros(1, 2)), torch.tensor([[15.0]]))


def test_classification_logits_are_untouched() -> None:
    spec = NetworkSpec(input_dim=2, output_dim=2, hidden=2, depth=1, dropout=0.0)
    model = TabularMLP(spec)
    features = torch.randn(4, 2)
    assert torch.equal(model(features), model.net(features))
