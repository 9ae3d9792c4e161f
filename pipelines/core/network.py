"""Torch modules of the `mlp` and `torch` families: lakeloop's MLP, and how any module is named and
built (the user's own, by class path), plus the task's output width and per-row loss."""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

MLP_CLASS = "pipelines.core.network:TabularMLP"


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
        return self.net(features)


def load_class(path: str) -> type:
    """`package.module:Class` (or `package.module.Class`) -> the class; an error naming the path."""
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import '{path}': {exc}") from None


@dataclass(frozen=True)
class ModuleSpec:
    """A torch module by class path and constructor arguments: `cls(input_dim, output_dim, **params)`.
    Regression: the module learns the target standardised by (shift, scale), and answers in the label's
    units (a raw target of mean 70 and SD 23 left 8 epochs at RMSE 47, worse than a constant's 23)."""

    class_path: str
    input_dim: int
    output_dim: int
    params: dict[str, Any] = field(default_factory=dict)
    target_shift: float = 0.0
    target_scale: float = 1.0

    def build(self) -> nn.Module:
        return load_class(self.class_path)(self.input_dim, self.output_dim, **self.params)

    def to_dict(self) -> dict:
        return asdict(self)


def loss_function(task: str) -> nn.Module:
    """Per-row losses (the training loop weighs them): cross-entropy covers binary and multiclass
    (two logits for binary); MSE for regression."""
    return nn.CrossEntropyLoss(reduction="none") if task == "classification" else nn.MSELoss(reduction="none")


def output_dim(task: str, classes: list | None) -> int:
    return len(classes or []) if task == "classification" else 1
