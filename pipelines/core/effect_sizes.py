"""How far a window's distribution moved from the reference, per feature: the effect sizes reported
next to the detectors' p-values. A p-value says whether a shift is real; on a 500-row window of a
large shift it underflows to 0 and says nothing about size. These do.

- numeric: the Wasserstein (earth mover's) distance in units of the reference's standard deviation
  (0.1 is a shift of a tenth of a standard deviation, whatever the feature's scale), and the
  population stability index over the reference's deciles (the credit-risk rule of thumb: below 0.1
  stable, 0.1-0.25 moderate, above 0.25 a major shift);
- categorical (codes, unseen and missing counted as codes of their own): the Jensen-Shannon distance
  of the category frequencies, base 2, so 0 is identical and 1 is disjoint.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

PSI_BINS = 10
PSI_FLOOR = 1e-4  # an empty bin's share: keeps log(0) out of the index, as is usual


def wasserstein_in_sd(reference: np.ndarray, window: np.ndarray) -> float:
    """Wasserstein distance divided by the reference's standard deviation (by 1 when it is 0)."""
    scale = float(np.std(reference)) or 1.0
    return float(wasserstein_distance(reference, window)) / scale


def population_stability_index(reference: np.ndarray, window: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI over the reference's quantile bins (ties merged), the outer bins open-ended."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
    expected = _shares(np.searchsorted(edges, reference, side="right"), len(edges) + 1)
    actual = _shares(np.searchsorted(edges, window, side="right"), len(edges) + 1)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def jensen_shannon(reference_codes: np.ndarray, window_codes: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) between the frequencies of integer category codes."""
    size = int(max(reference_codes.max(initial=0), window_codes.max(initial=0))) + 1
    reference = np.bincount(reference_codes.astype(np.int64), minlength=size)
    window = np.bincount(window_codes.astype(np.int64), minlength=size)
    return float(jensenshannon(reference, window, base=2))


def feature_effects(
    reference: np.ndarray, window: np.ndarray, columns: list[str], categorical: set[str]
) -> dict[str, dict[str, float]]:
    """Per column of two encoded matrices (rows x columns): its effect sizes, by measure name."""
    effects = {}
    for index, column in enumerate(columns):
        before, after = reference[:, index], window[:, index]
        if column in categorical:
            effects[column] = {"jensen_shannon": round(jensen_shannon(before, after), 4)}
        else:
            effects[column] = {
                "wasserstein_sd": round(wasserstein_in_sd(before, after), 4),
                "psi": round(population_stability_index(before, after), 4),
            }
    return effects


def _shares(bin_index: np.ndarray, bins: int) -> np.ndarray:
    counts = np.bincount(bin_index, minlength=bins).astype(float)
    return np.maximum(counts / max(len(bin_index), 1), PSI_FLOOR)
