"""Drift detectors fitted at training time and stored with the model (MLflow artifacts `drift/`).

- feature-wise: alibi-detect TabularDrift (KS for numeric, chi-square for categorical features,
  Bonferroni-corrected) on raw features;
- multivariate: MMDDrift (PyTorch backend) on the preprocessed features (one-hot slots), subsampled;
- prediction drift: KSDrift on the model's score (positive-class probability, or the prediction);
- performance drift: the gate metric on rows labelled through /feedback against the test score.

alibi-detect is imported lazily: importing it takes seconds. It is licensed BSL 1.1.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.core.config import MonitorConfig
from pipelines.core.effect_sizes import feature_effects
from pipelines.core.metrics import greater_is_better
from pipelines.training.fitted_model import PREDICTION_COLUMN, PROBABILITY_PREFIX, LakeloopModel, evaluate_predictions

DRIFT_ARTIFACT = "drift"  # where a training run stores the detectors (MLflow artifacts)
DETECTORS = ("features", "multivariate", "prediction")  # fitted at training time, stored with the model
PERFORMANCE = "performance"  # the detector on labelled rows (/feedback): the gate metric against the test score


@dataclass
class DetectorResult:
    detector: str
    is_drift: bool | None  # None: no decision possible on this window
    p_value: float | None  # the smallest p-value (feature-wise) or the test's p-value; None: not a test
    threshold: float
    distance: float | None
    details: dict = field(default_factory=dict)  # per-feature p-values for the feature detector
    seconds: float = 0.0  # time the check took


def model_score(model: LakeloopModel, frame: pd.DataFrame) -> np.ndarray:
    """One number per row: the last class's probability (binary: the positive class) or the value."""
    output = model.predict_frame(frame)
    columns = [c for c in output.columns if c.startswith(PROBABILITY_PREFIX)]
    return (output[columns[-1]] if columns else output[PREDICTION_COLUMN]).to_numpy(np.float32)


class FeatureEncoder:
    """Raw features -> a float matrix for TabularDrift: numeric NaN filled with the reference
    median; categories coded by the reference vocabulary (unseen and missing get codes of their own)."""

    def __init__(self, numeric: list[str], categorical: list[str], medians: dict, vocab: dict) -> None:
        self.numeric, self.categorical, self.medians, self.vocab = numeric, categorical, medians, vocab

    @classmethod
    def fit(cls, reference: pd.DataFrame, numeric: list[str], categorical: list[str]) -> FeatureEncoder:
        medians = {c: float(pd.to_numeric(reference[c]).median()) for c in numeric}
        vocab = {c: sorted(str(v) for v in reference[c].dropna().unique()) for c in categorical}
        return cls(numeric, categorical, medians, vocab)

    @property
    def columns(self) -> list[str]:
        return self.numeric + self.categorical

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        parts = [pd.to_numeric(frame[c]).astype(float).fillna(self.medians[c]).to_numpy() for c in self.numeric]
        for c in self.categorical:
            codes = {v: i for i, v in enumerate(self.vocab[c])}
            unseen, missing = len(codes), len(codes) + 1
            parts.append(np.array([missing if v is None or v != v else codes.get(str(v), unseen) for v in frame[c]]))
        return np.column_stack(parts).astype(np.float32)

    def to_json(self) -> str:
        return json.dumps(
            {"numeric": self.numeric, "categorical": self.categorical, "medians": self.medians, "vocab": self.vocab}
        )

    @classmethod
    def from_json(cls, text: str) -> FeatureEncoder:
        return cls(**json.loads(text))


@dataclass
class DriftSuite:
    encoder: FeatureEncoder
    model: LakeloopModel
    features: object  # alibi TabularDrift
    multivariate: object  # alibi MMDDrift
    prediction: object  # alibi KSDrift
    mmd_rows: int
    seed: int = 0

    @classmethod
    def fit(cls, reference: pd.DataFrame, model: LakeloopModel, monitor: MonitorConfig, seed: int = 0) -> DriftSuite:
        from alibi_detect.cd import KSDrift, MMDDrift, TabularDrift

        dataset = model.pipeline.dataset
        alpha = monitor.alpha / len(DETECTORS)  # Bonferroni across detectors: a calm window alarms with prob <= alpha
        sample = reference.sample(min(len(reference), monitor.reference_rows), random_state=seed).reset_index(drop=True)
        encoder = FeatureEncoder.fit(sample, dataset.numeric, dataset.categorical)
        categorical = {encoder.columns.index(c): None for c in dataset.categorical}
        features = TabularDrift(
            encoder.encode(sample), p_val=alpha, categories_per_feature=categorical, correction="bonferroni"
        )
        small = sample.sample(min(len(sample), monitor.mmd_reference_rows), random_state=seed)
        multivariate = MMDDrift(
            model.pipeline.onehot_frame(small),
            backend="pytorch",
            p_val=alpha,
            n_permutations=monitor.mmd_permutations,
        )
        prediction = KSDrift(model_score(model, sample), p_val=alpha)
        return cls(encoder, model, features, multivariate, prediction, monitor.mmd_rows, seed)

    def check(self, window: pd.DataFrame) -> list[DetectorResult]:
        return [_timed(check, window) for check in (self._features, self._multivariate, self._prediction)]

    def _features(self, window: pd.DataFrame) -> DetectorResult:
        encoded = self.encoder.encode(window)
        tabular = self.features.predict(encoded, drift_type="batch")["data"]
        p_values = {c: float(p) for c, p in zip(self.encoder.columns, tabular["p_val"], strict=True)}
        effects = feature_effects(self.reference, encoded, self.encoder.columns, set(self.encoder.categorical))
        return DetectorResult(
            "features",
            bool(tabular["is_drift"]),
            min(p_values.values()),
            float(tabular["threshold"]),
            None,
            {"p_values": p_values, "effect_sizes": effects},
        )

    @property
    def reference(self) -> np.ndarray:
        """The encoded reference sample the feature detector compares with (stored with it)."""
        return np.asarray(self.features.x_ref)

    @property
    def reference_scores(self) -> np.ndarray:
        """The model's scores on the reference sample (the prediction detector's reference)."""
        return np.asarray(self.prediction.x_ref).ravel()

    def _multivariate(self, window: pd.DataFrame) -> DetectorResult:
        small = window.sample(min(len(window), self.mmd_rows), random_state=self.seed)
        mmd = self.multivariate.predict(self.model.pipeline.onehot_frame(small))["data"]
        return DetectorResult(
            "multivariate", bool(mmd["is_drift"]), float(mmd["p_val"]), float(mmd["threshold"]), float(mmd["distance"])
        )

    def _prediction(self, window: pd.DataFrame) -> DetectorResult:
        ks = self.prediction.predict(model_score(self.model, window))["data"]
        return DetectorResult(
            "prediction",
            bool(ks["is_drift"]),
            float(np.min(ks["p_val"])),
            float(ks["threshold"]),
            float(np.max(ks["distance"])),
        )

    def save(self, directory: Path) -> Path:
        from alibi_detect.saving import save_detector

        directory.mkdir(parents=True, exist_ok=True)
        (directory / "encoder.json").write_text(self.encoder.to_json())
        (directory / "settings.json").write_text(json.dumps({"mmd_rows": self.mmd_rows, "seed": self.seed}))
        for name in DETECTORS:
            save_detector(getattr(self, name), str(directory / name))
        return directory

    @classmethod
    def load(cls, directory: Path, model: LakeloopModel) -> DriftSuite:
        from alibi_detect.saving import load_detector

        settings = json.loads((directory / "settings.json").read_text())
        detectors = {name: load_detector(str(directory / name)) for name in DETECTORS}
        encoder = FeatureEncoder.from_json((directory / "encoder.json").read_text())
        return cls(encoder, model, **detectors, **settings)


def _timed(check, window: pd.DataFrame) -> DetectorResult:
    started = time.perf_counter()
    result = check(window)
    result.seconds = time.perf_counter() - started
    return result


def performance_check(
    model: LakeloopModel, labelled: pd.DataFrame, metric: str, reference: float | None, max_drop: float
) -> DetectorResult:
    """Performance drift: the gate metric on labelled live rows against the champion's test score.
    No decision (is_drift None) when the metric is undefined on the window (e.g. AUC with one
    class present) or the champion has no test score to compare with."""
    dataset = model.pipeline.dataset
    value = evaluate_predictions(
        model.predict_frame(labelled[dataset.feature_names]), labelled[dataset.label], dataset
    ).get(metric, float("nan"))
    drop = (
        float("nan") if reference is None else (reference - value if greater_is_better(metric) else value - reference)
    )
    decided = bool(np.isfinite(drop))
    return DetectorResult(
        PERFORMANCE,
        bool(drop > max_drop) if decided else None,
        None,
        max_drop,
        drop if decided else None,
        {
            "metric": metric,
            "value": value if np.isfinite(value) else None,
            "reference": reference,
            "labelled_rows": len(labelled),
        },
    )
