"""lakeloop's MLP (the `mlp` family's torch module), its eval-mode forward in numpy for a few rows,
and the per-row loss a torch family trains with."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TabularMLP(nn.Module):
    """`depth` hidden layers of `hidden` units (ReLU, dropout), then one output per class (or one value)."""

    def __init__(self, input_dim: int, output_dim: int, hidden: int = 64, depth: int = 2, dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        layers.append(nn.Linear(width, output_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # the layers one by one, dropout only while training: a 1-row forward through `self.net`, with
        # the container's and both Dropout modules' calls, took 0.075 ms; this takes 0.045
        for layer in self.net:
            if self.training or not isinstance(layer, nn.Dropout):
                features = layer(features)
        return features


LinearLayers = list[tuple[np.ndarray, np.ndarray]]  # (weight as inputs x outputs, bias) per nn.Linear


def numpy_layers(module: nn.Module) -> LinearLayers | None:
    """A TabularMLP's linear layers as numpy arrays (copies); None for any other module, whose forward
    is the user's own."""
    if type(module) is not TabularMLP:
        return None
    return [
        (layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy())
        for layer in module.net
        if isinstance(layer, nn.Linear)
    ]


def forward_numpy(layers: LinearLayers, features: np.ndarray) -> np.ndarray:
    """TabularMLP.forward in eval mode (dropout the identity, ReLU after each hidden layer), in numpy."""
    hidden = features
    for weight, bias in layers[:-1]:
        hidden = hidden @ weight
        hidden += bias
        np.maximum(hidden, 0, out=hidden)
    weight, bias = layers[-1]
    return hidden @ weight + bias


def loss_function(task: str) -> nn.Module:
    """Per-row losses (the training loop weighs them): cross-entropy covers binary and multiclass
    (two logits for binary); MSE for regression."""
    return nn.CrossEntropyLoss(reduction="none") if task == "classification" else nn.MSELoss(reduction="none")
