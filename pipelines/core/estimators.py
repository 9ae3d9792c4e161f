"""A trained learner behind one interface, whatever its family: `outputs(matrix)` turns the feature
transform's matrix into class probabilities (rows x classes) or values (rows). `encoding` says whether
it reads the categorical slots as they are ("slots": trees split on them natively) or one column per
slot ("onehot": networks, most scikit-learn estimators). Each pickles without MLflow or Ray, so a
batch-inference actor or a Serve replica loads it with only the family's own library."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from pipelines.core.compiled_trees import CompiledTrees, compile_trees, sigmoid, softmax
from pipelines.core.module_spec import ModuleSpec

Encoding = Literal["slots", "onehot"]
# Up to this many rows a tree ensemble predicts on one thread: for one row the thread pool's start
# costs more than the trees (xgboost inplace_predict, 100 trees: 0.2 ms a row either way).
ONE_THREAD_ROWS = 1024
# Up to this many rows the trees run as compiled Python (pipelines/core/compiled_trees.py): about
# 0.02 ms a row for the demo's 55 trees against xgboost's 0.17-0.19 ms a call (even at 8 rows);
# 4 leaves room for ensembles ten times larger, where a row costs 0.1 ms.
COMPILED_ROWS = 4
# Up to this many rows lakeloop's MLP runs in numpy (pipelines/core/network.py), where torch's per-op
# dispatch costs more than the arithmetic (105 inputs, two layers of 64): 1 row 0.024 ms against
# 0.060 through torch, 16 rows 0.042 against 0.086, 64 rows 0.070 against 0.094.
NUMPY_ROWS = 16


class Estimator(Protocol):
    family: str  # the configured family's name (train.families)
    encoding: Encoding

    def outputs(self, matrix: np.ndarray) -> np.ndarray: ...


def _probabilities(scores: np.ndarray, classes: int) -> np.ndarray:
    """(rows, classes) from a binary model's positive-class probability or a multiclass one's matrix."""
    if scores.ndim == 1:
        return np.column_stack([1.0 - scores, scores]) if classes == 2 else scores[:, None]
    return scores


class TorchEstimator:
    """A torch module (lakeloop's MLP or the user's) with its trained weights."""

    encoding: Encoding = "onehot"

    def __init__(self, family: str, spec: ModuleSpec, state_dict: dict, task: str) -> None:
        self.family, self.spec, self.task = family, spec, task
        self._load(state_dict)

    def _load(self, state_dict: dict) -> None:
        from pipelines.core.network import numpy_layers

        self.module = self.spec.build()
        self.module.load_state_dict(state_dict)
        self.module.eval()
        self._layers = numpy_layers(self.module)  # None: a user's module, always through torch

    def outputs(self, matrix: np.ndarray) -> np.ndarray:
        if self._layers is not None and len(matrix) <= NUMPY_ROWS:
            return self._numpy_outputs(matrix)
        import torch

        with torch.inference_mode():
            raw = self.module(torch.from_numpy(matrix))
            if self.task == "regression":
                return (raw[:, 0] * self.spec.target_scale + self.spec.target_shift).numpy().astype(np.float64)
            return torch.softmax(raw, dim=1).numpy().astype(np.float64)

    def _numpy_outputs(self, matrix: np.ndarray) -> np.ndarray:
        from pipelines.core.network import forward_numpy

        raw = forward_numpy(self._layers, matrix).astype(np.float64)
        if self.task == "regression":
            return raw[:, 0] * self.spec.target_scale + self.spec.target_shift
        return softmax(raw)

    def __getstate__(self) -> dict:
        return {"family": self.family, "spec": self.spec, "task": self.task, "state": self.module.state_dict()}

    def __setstate__(self, state: dict) -> None:
        self.family, self.spec, self.task = state["family"], state["spec"], state["task"]
        self._load(state["state"])


class XGBoostEstimator:
    """A gradient-boosted tree ensemble (xgboost): the early-stopped round count, refitted on the
    training and validation rows (or the early-stopped booster cut at its best round). A few rows at a
    time (a request, a 1-row pyfunc call) run through the same trees compiled to Python."""

    encoding: Encoding = "slots"

    def __init__(self, family: str, booster_raw: bytes, task: str, classes: int) -> None:
        self.family, self.booster_raw, self.task, self.classes = family, bytes(booster_raw), task, classes
        self.threads = os.cpu_count() or 1  # for large batches (batch inference sets its actor's CPUs)
        self._booster, self._threads_set = None, 0
        self._compiled: CompiledTrees | None | bool = False  # False: not compiled yet

    @property
    def booster(self):
        if self._booster is None:
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(bytearray(self.booster_raw))
            self._booster = booster
        return self._booster

    @property
    def compiled(self) -> CompiledTrees | None:
        """The trees as Python, with the intercept xgboost adds (None: too large to gain from it)."""
        if self._compiled is False:
            booster = self.booster
            outputs = self.classes if self.task == "classification" and self.classes > 2 else 1
            compiled = compile_trees(json.loads(bytes(booster.save_raw("json"))), outputs)
            if compiled is not None:
                probe = np.zeros((1, booster.num_features()), np.float32)
                margin = np.asarray(self._inplace(probe, predict_type="margin"), np.float64).reshape(1, outputs)
                compiled = compiled.with_intercept(margin[0] - compiled.tree_sums(probe)[0])
            self._compiled = compiled
        return self._compiled  # type: ignore[return-value]

    def _inplace(self, matrix: np.ndarray, **options) -> np.ndarray:
        threads = 1 if len(matrix) <= ONE_THREAD_ROWS else self.threads
        if threads != self._threads_set:
            self.booster.set_param({"nthread": threads})
            self._threads_set = threads
        return self.booster.inplace_predict(matrix, **options)

    def outputs(self, matrix: np.ndarray) -> np.ndarray:
        compiled = self.compiled if len(matrix) <= COMPILED_ROWS else None
        if compiled is None:
            scores = np.asarray(self._inplace(matrix), np.float64)
        elif self.task == "regression":
            scores = compiled.margins(matrix)[:, 0]
        elif self.classes > 2:
            scores = softmax(compiled.margins(matrix))
        else:
            scores = sigmoid(compiled.margins(matrix)[:, 0])
        return scores if self.task == "regression" else _probabilities(scores, self.classes)

    def __getstate__(self) -> dict:
        return {"family": self.family, "booster_raw": self.booster_raw, "task": self.task, "classes": self.classes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["family"], state["booster_raw"], state["task"], state["classes"])


class SklearnEstimator:
    """Any estimator with the scikit-learn API (fit, predict_proba or predict), trained on class
    indices; a class it never saw in training gets probability 0."""

    def __init__(self, family: str, estimator: Any, task: str, classes: int, encoding: Encoding) -> None:
        self.family, self.estimator, self.task, self.classes, self.encoding = family, estimator, task, classes, encoding

    def outputs(self, matrix: np.ndarray) -> np.ndarray:
        if self.task == "regression":
            return np.asarray(self.estimator.predict(matrix), np.float64)
        seen = np.asarray(self.estimator.classes_, np.intp)
        probabilities = np.zeros((len(matrix), self.classes), np.float64)
        probabilities[:, seen] = self.estimator.predict_proba(matrix)
        return probabilities


@dataclass
class Trained:
    """What a family's training returns: the estimator (its best state), each report's metrics, the
    epoch (or report) it resumed from after a failure, and the settings it trained with."""

    estimator: Estimator
    history: list[dict[str, float]]
    resumed_from_epoch: int
    params: dict[str, Any]
