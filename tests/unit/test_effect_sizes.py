"""Effect sizes: zero for the same distribution, the size of a known shift, bounded where defined."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.core.effect_sizes import (
    feature_effects,
    jensen_shannon,
    population_stability_index,
    wasserstein_in_sd,
)

rng = np.random.default_rng(0)
REFERENCE = rng.normal(70.0, 20.0, 5000)


def test_a_shift_of_one_standard_deviation_measures_one_whatever_the_scale() -> None:
    for scale in (1.0, 1000.0):
        reference = REFERENCE * scale
        assert wasserstein_in_sd(reference, reference + 20.0 * scale) == pytest.approx(1.0, rel=0.02)
    assert wasserstein_in_sd(REFERENCE, rng.normal(70.0, 20.0, 500)) < 0.15


def test_psi_follows_the_rule_of_thumb() -> None:
    same = population_stability_index(REFERENCE, rng.normal(70.0, 20.0, 500))
    small = population_stability_index(REFERENCE, rng.normal(74.0, 20.0, 5000))
    large = population_stability_index(REFERENCE, rng.normal(95.0, 20.0, 500))
    assert same < 0.1 and large > 0.25
    assert same < small < large


def test_psi_of_a_constant_reference_is_finite() -> None:
    constant = np.zeros(100)
    assert population_stability_index(constant, constant) == pytest.approx(0.0)
    assert np.isfinite(population_stability_index(constant, np.ones(100)))


def test_jensen_shannon_is_zero_when_equal_and_one_when_disjoint() -> None:
    codes = rng.integers(0, 3, 1000)
    assert jensen_shannon(codes, codes) == pytest.approx(0.0, abs=1e-9)
    assert jensen_shannon(np.zeros(50), np.full(50, 4)) == pytest.approx(1.0)
    moved = jensen_shannon(codes, rng.choice(3, 1000, p=[0.25, 0.35, 0.4]))
    assert 0.05 < moved < 0.5


def test_each_column_gets_the_measures_of_its_kind() -> None:
    reference = np.column_stack([REFERENCE, rng.integers(0, 3, 5000)])
    window = np.column_stack([REFERENCE[:500] + 25.0, rng.integers(0, 3, 500)])
    effects = feature_effects(reference, window, ["charges", "plan"], {"plan"})
    assert set(effects["charges"]) == {"wasserstein_sd", "psi"} and set(effects["plan"]) == {"jensen_shannon"}
    assert effects["charges"]["wasserstein_sd"] > 1.0 and effects["plan"]["jensen_shannon"] < 0.1
