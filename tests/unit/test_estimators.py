"""Each family's estimator answers in the task's terms: probabilities per class, or values in the
label's units."""

from __future__ import annotations

import numpy as np
import torch

from pipelines.core.estimators import SklearnEstimator, TorchEstimator
from pipelines.core.module_spec import MLP_CLASS, ModuleSpec


def _zeroed(spec: ModuleSpec) -> dict:
    module = spec.build()
    for parameter in module.parameters():
        torch.nn.init.zeros_(parameter)
    return module.state_dict()


def test_an_untrained_regression_network_answers_the_target_mean() -> None:
    spec = ModuleSpec(MLP_CLASS, 3, 1, {"hidden": 4, "depth": 1, "dropout": 0.0}, target_shift=70.0, target_scale=23.0)
    assert np.allclose(
        TorchEstimator("mlp", spec, _zeroed(spec), "regression").outputs(np.ones((2, 3), np.float32)), 70.0
    )


def test_the_target_scale_multiplies_what_the_network_learns() -> None:
    spec = ModuleSpec(MLP_CLASS, 2, 1, {"hidden": 2, "depth": 1, "dropout": 0.0}, target_shift=10.0, target_scale=5.0)
    state = _zeroed(spec)
    state["net.3.bias"] = torch.tensor([1.0])  # one standard deviation above the mean
    assert np.allclose(TorchEstimator("mlp", spec, state, "regression").outputs(np.zeros((1, 2), np.float32)), 15.0)


def test_classification_outputs_are_probabilities() -> None:
    spec = ModuleSpec(MLP_CLASS, 2, 3, {"hidden": 4, "depth": 1, "dropout": 0.0})
    outputs = TorchEstimator("mlp", spec, spec.build().state_dict(), "classification").outputs(
        np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    )
    assert outputs.shape == (5, 3) and np.allclose(outputs.sum(axis=1), 1.0)


def test_a_class_an_sklearn_estimator_never_saw_gets_probability_zero() -> None:
    from sklearn.dummy import DummyClassifier

    fitted = DummyClassifier(strategy="prior").fit(np.zeros((4, 1)), [0, 2, 2, 2])
    outputs = SklearnEstimator("dummy", fitted, "classification", 3, "onehot").outputs(np.zeros((1, 1)))
    assert np.allclose(outputs, [[0.25, 0.0, 0.75]])


def test_a_few_rows_through_the_mlp_in_numpy_answer_as_torch_does() -> None:
    from pipelines.core.estimators import NUMPY_ROWS

    rows = np.random.default_rng(1).normal(size=(NUMPY_ROWS + 8, 6)).astype(np.float32)
    for task, outputs, shift in (("classification", 3, 0.0), ("regression", 1, 70.0)):
        torch.manual_seed(0)
        spec = ModuleSpec(MLP_CLASS, 6, outputs, {"hidden": 8, "depth": 2, "dropout": 0.5}, shift, 23.0)
        estimator = TorchEstimator("mlp", spec, spec.build().state_dict(), task)
        many = estimator.outputs(rows)  # more than NUMPY_ROWS: through torch
        few = np.concatenate([estimator.outputs(rows[i : i + 4]) for i in range(0, len(rows), 4)])
        assert estimator._layers is not None  # lakeloop's MLP: a few rows go through numpy
        np.testing.assert_allclose(few, many, rtol=1e-5, atol=1e-6)
        assert few.dtype == many.dtype == np.float64


def test_a_users_torch_module_always_runs_through_torch() -> None:
    spec = ModuleSpec("torch.nn:Linear", 2, 1, {})  # any module but lakeloop's MLP: Linear(2, 1)
    assert TorchEstimator("user", spec, spec.build().state_dict(), "regression")._layers is None
