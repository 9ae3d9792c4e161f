"""Evaluation figures logged to MLflow: learning curves and a confusion matrix or residual plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from pipelines.core.config import DatasetConfig
from pipelines.training.fitted_model import PREDICTION_COLUMN


def learning_curves(history: list[dict]) -> plt.Figure:
    """Losses (where the family reports them: the torch loop does) and validation metrics per report
    (an epoch, or xgboost's rounds_per_report rounds)."""
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        if key in history[0]:
            losses.plot(epochs, [h[key] for h in history], label=label)
    losses.set_xlabel("report")
    if losses.lines:
        losses.legend()
    for key in sorted(k for k in history[0] if k.startswith("val_") and k != "val_loss"):
        scores.plot(epochs, [h[key] for h in history], label=key)
    scores.set_xlabel("report")
    scores.legend()
    figure.tight_layout()
    return figure


def confusion(predictions: pd.DataFrame, labels: pd.Series, classes: list) -> plt.Figure:
    names = [str(c) for c in classes]
    matrix = confusion_matrix(labels.astype(str), predictions[PREDICTION_COLUMN].astype(str), labels=names)
    figure, axis = plt.subplots(figsize=(4 + len(names) * 0.4, 4))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(names)), names)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, str(value), ha="center", va="center")
    figure.tight_layout()
    return figure


def residuals(predictions: pd.DataFrame, labels: pd.Series) -> plt.Figure:
    predicted = predictions[PREDICTION_COLUMN].to_numpy(float)
    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter(predicted, labels.to_numpy(float) - predicted, s=4, alpha=0.5)
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual - predicted")
    figure.tight_layout()
    return figure


def log_evaluation_figures(
    history: list[dict], predictions: pd.DataFrame, labels: pd.Series, dataset: DatasetConfig
) -> None:
    figures = {"learning_curves.png": learning_curves(history)} if history else {}
    if dataset.task == "classification":
        figures["confusion_matrix.png"] = confusion(predictions, labels, dataset.classes or [])
    else:
        figures["residuals.png"] = residuals(predictions, labels)
    for name, figure in figures.items():
        mlflow.log_figure(figure, f"plots/{name}")
        plt.close(figure)
