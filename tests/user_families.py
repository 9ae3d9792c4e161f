"""The worked examples of docs/families.md, as a user would write them in a package of their own: a
PyTorch module (`kind: torch`) and an estimator written against the scikit-learn API (`kind:
sklearn`). tests/integration/test_families.py takes both through the whole loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ResidualNet(nn.Module):
    """`cls(input_dim, output_dim, **params)`: the one-hot feature matrix in, one logit per class out."""

    def __init__(self, input_dim: int, output_dim: int, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(input_dim, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU()) for _ in range(blocks)
        )
        self.head = nn.Linear(width, output_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(features)
        for block in self.blocks:
            hidden = hidden + block(hidden)
        return self.head(hidden)


class GaussianNaiveBayes:
    """`cls(**params)` with fit(X, y, sample_weight) and predict_proba(X): per class, a weighted mean
    and variance of each column; `classes_` says which class each probability column is."""

    def __init__(self, var_smoothing: float = 1e-3) -> None:
        self.var_smoothing = var_smoothing

    def fit(self, features: np.ndarray, target: np.ndarray, sample_weight: np.ndarray | None = None):
        weight = np.ones(len(target)) if sample_weight is None else np.asarray(sample_weight, np.float64)
        self.classes_ = np.unique(target)
        stats = []
        for label in self.classes_:
            rows, w = features[target == label], weight[target == label]
            mean = np.average(rows, axis=0, weights=w)
            var = np.average((rows - mean) ** 2, axis=0, weights=w) + self.var_smoothing
            stats.append((np.log(w.sum() / weight.sum()), mean, var))
        self.log_prior_ = np.array([s[0] for s in stats])
        self.mean_, self.var_ = np.array([s[1] for s in stats]), np.array([s[2] for s in stats])
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        diff = features[:, None, :] - self.mean_[None, :, :]
        log_likelihood = -0.5 * (np.log(2 * np.pi * self.var_) + diff**2 / self.var_).sum(axis=2)
        joint = log_likelihood + self.log_prior_
        joint -= joint.max(axis=1, keepdims=True)
        probabilities = np.exp(joint)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.classes_[self.predict_proba(features).argmax(axis=1)]
