"""The online gate's statistics: exact p-values, and the false-promotion rate and power they give
over seeded simulated traffic with repeated looks (pure: no services)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipelines.core.metrics import classification
from pipelines.core.paired_evidence import mcnemar, paired_bootstrap, verdict

ALPHA, LOOKS, MIN_PAIRS, MAX_PAIRS = 0.05, 10, 100, 1000


def test_mcnemar_counts_only_disagreements_and_gives_the_exact_binomial_tail() -> None:
    # 10 rows only the candidate got right, 2 only the champion, 50 both: P(X >= 10 | 12, 1/2)
    champion = np.array([False] * 10 + [True] * 2 + [True] * 50)
    candidate = np.array([True] * 10 + [False] * 2 + [True] * 50)
    evidence = mcnemar(champion, candidate)
    assert evidence.p_better == pytest.approx((66 + 12 + 1) / 4096)
    assert evidence.p_worse == pytest.approx(1 - (1 + 12) / 4096)
    assert (evidence.champion, evidence.candidate, evidence.pairs) == (52 / 62, 60 / 62, 62)
    same = mcnemar(champion, champion)
    assert same.p_better == same.p_worse == 1.0


def test_rows_that_do_not_pair_are_refused() -> None:
    with pytest.raises(ValueError, match="same rows"):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def _looks(rng: np.random.Generator, champion_rate: float, candidate_rate: float) -> str:
    """One simulated live comparison: labelled pairs arrive, the gate looks every MAX_PAIRS / LOOKS."""
    champion = rng.random(MAX_PAIRS) < champion_rate
    candidate = rng.random(MAX_PAIRS) < candidate_rate  # independent errors: many disagreements
    for pairs in range(MAX_PAIRS // LOOKS, MAX_PAIRS + 1, MAX_PAIRS // LOOKS):
        decided = verdict(mcnemar(champion[:pairs], candidate[:pairs]), ALPHA, MIN_PAIRS, MAX_PAIRS, LOOKS)
        if decided.action != "wait":
            return decided.action
    raise AssertionError("max_pairs must end the comparison")


def test_an_equal_candidate_is_promoted_at_most_alpha_of_the_time_despite_repeated_looks() -> None:
    rng = np.random.default_rng(7)
    trials = 400
    promoted = sum(_looks(rng, 0.80, 0.80) == "promote" for _ in range(trials))
    # at most alpha in expectation; 0.05 * 400 = 20, plus three binomial standard deviations
    assert promoted <= ALPHA * trials + 3 * np.sqrt(trials * ALPHA * (1 - ALPHA))


def test_the_same_looks_without_spending_alpha_promote_an_equal_candidate_too_often() -> None:
    """Why the looks share alpha: testing each look at the full alpha promotes far more often."""
    rng = np.random.default_rng(7)
    trials, promoted = 400, 0
    for _ in range(trials):
        champion, candidate = rng.random(MAX_PAIRS) < 0.8, rng.random(MAX_PAIRS) < 0.8
        looks = range(MAX_PAIRS // LOOKS, MAX_PAIRS + 1, MAX_PAIRS // LOOKS)
        promoted += any(mcnemar(champion[:n], candidate[:n]).p_better <= ALPHA for n in looks)
    assert promoted > 1.5 * ALPHA * trials


def test_a_better_candidate_is_promoted_and_a_worse_one_retired_within_max_pairs() -> None:
    rng = np.random.default_rng(11)
    assert sum(_looks(rng, 0.75, 0.85) == "promote" for _ in range(100)) >= 95
    assert sum(_looks(rng, 0.85, 0.75) == "retire" for _ in range(100)) == 100


def test_the_bootstrap_finds_a_lower_log_loss_in_either_direction() -> None:
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 2, 400)
    sharp = np.where(targets == 1, 0.8, 0.2)  # calibrated and confident: low log loss
    vague = np.full(400, 0.5)

    def log_loss(y: np.ndarray, p1: np.ndarray) -> float:
        return classification(y, np.column_stack([1 - p1, p1]))["log_loss"]

    better = paired_bootstrap("log_loss", log_loss, targets, vague, sharp, rounds=300)
    assert better.p_better < 0.01 and better.p_worse > 0.99 and better.candidate < better.champion
    worse = paired_bootstrap("log_loss", log_loss, targets, sharp, vague, rounds=300)
    assert worse.p_worse < 0.01 and verdict(worse, ALPHA, 100, 1000, LOOKS).action == "retire"


def test_too_few_pairs_wait_and_bad_settings_are_refused() -> None:
    evidence = mcnemar(np.zeros(50, bool), np.ones(50, bool))  # very significant, but only 50 pairs
    assert verdict(evidence, ALPHA, MIN_PAIRS, MAX_PAIRS, LOOKS).action == "wait"
    assert verdict(evidence, ALPHA, 50, MAX_PAIRS, LOOKS).action == "promote"
    with pytest.raises(ValueError, match="alpha"):
        verdict(evidence, 1.5, MIN_PAIRS, MAX_PAIRS, LOOKS)


def test_a_look_is_spent_only_when_the_pairs_grew_past_min_pairs_and_the_last_look_retires() -> None:
    from pipelines.core.config import OnlineGateConfig
    from pipelines.core.paired_evidence import PairedEvidence, next_look

    online = OnlineGateConfig(min_pairs=100, max_pairs=1000, looks=2)
    undecided = PairedEvidence("roc_auc", 150, 0.80, 0.81, 0.3, 0.7)
    assert next_look(None, online, 0, 0, 1000)[0].action == "wait"
    assert next_look(PairedEvidence("roc_auc", 99, 0.8, 0.9, 0.001, 0.99), online, 0, 0, 1000)[1] == 0
    decided, looks = next_look(undecided, online, 0, 0, 1000)
    assert (decided.action, looks) == ("wait", 1)
    assert next_look(undecided, online, 1, 150, 1000)[1] == 1  # no new pairs since the last look: none spent
    assert "next look at 151" in next_look(undecided, online, 1, 150, 1000)[0].reason
    grown = PairedEvidence("roc_auc", 200, 0.80, 0.81, 0.3, 0.7)
    final, looks = next_look(grown, online, 1, 150, 1000)
    assert (final.action, looks) == ("retire", 2) and "no significant gain in 2 looks" in final.reason
    assert next_look(PairedEvidence("roc_auc", 200, 0.8, 0.9, 0.001, 0.99), online, 0, 0, 1000)[0].action == "promote"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_rank_auc_equals_scikit_learns_with_ties_and_duplicates(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    from pipelines.core.metrics import binary_auc

    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 500)
    scores = np.round(rng.random(500) + 0.3 * targets, 1)  # coarse: many ties
    rows = rng.integers(0, 500, 500)  # a bootstrap resample: duplicated rows
    assert binary_auc(targets[rows], scores[rows]) == pytest.approx(roc_auc_score(targets[rows], scores[rows]))
    assert np.isnan(binary_auc(np.ones(5), scores[:5]))


def _promoted_by_margin(rng: np.random.Generator, champion_rate: float, candidate_rate: float, trials: int) -> int:
    """Candidates promoted at one look with a 0.05 non-inferiority margin, over seeded comparisons of
    600 labelled pairs with independent errors."""
    from pipelines.core.paired_evidence import not_worse_by

    promoted = 0
    for trial in range(trials):
        champion, candidate = rng.random(600) < champion_rate, rng.random(600) < candidate_rate
        evidence = not_worse_by(mcnemar(champion, candidate), 0.05, champion, candidate, rounds=300, seed=trial)
        promoted += verdict(evidence, ALPHA, MIN_PAIRS, MAX_PAIRS, 1).action == "promote"
    return promoted


def test_against_a_failing_champion_a_candidate_worse_by_the_margin_is_promoted_at_most_alpha_of_the_time() -> None:
    """The non-inferiority look's false promotions are candidates worse by the margin or more: at the
    boundary (worse by exactly 0.05) at most alpha, plus three binomial standard deviations."""
    trials = 300
    at_boundary = _promoted_by_margin(np.random.default_rng(5), 0.60, 0.55, trials)
    assert at_boundary <= ALPHA * trials + 3 * np.sqrt(trials * ALPHA * (1 - ALPHA))
    assert _promoted_by_margin(np.random.default_rng(6), 0.60, 0.50, trials) <= 2  # worse by twice the margin


def test_against_a_failing_champion_an_equal_candidate_is_promoted_by_the_margin() -> None:
    """Without the margin an equal candidate is promoted only by chance (about alpha); with it, most
    of the time (sd of the difference ~0.028 at 600 pairs: the margin is ~1.8 sd)."""
    from pipelines.core.paired_evidence import not_worse_by

    rng, trials = np.random.default_rng(8), 200
    assert _promoted_by_margin(rng, 0.60, 0.60, trials) >= 0.4 * trials
    champion, candidate = rng.random(600) < 0.6, rng.random(600) < 0.6
    plain = mcnemar(champion, candidate)
    with_margin = not_worse_by(plain, 0.05, champion, candidate, rounds=300)
    assert with_margin.p_not_worse <= with_margin.p_better == plain.p_better and plain.p_not_worse is None
    assert "below its floor" in verdict(replace(with_margin, p_better=1.0, p_not_worse=0.0), ALPHA, 100, 1000, 1).reason


def test_the_bootstrap_with_a_margin_counts_resamples_where_the_candidate_lost_that_much() -> None:
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, 400).astype(float)
    champion = targets + rng.normal(0, 0.3, 400)
    candidate = targets + rng.normal(0, 0.32, 400)  # slightly worse

    def rmse(y: np.ndarray, p: np.ndarray) -> float:
        return float(np.sqrt(np.mean((y - p) ** 2)))

    loose = paired_bootstrap("rmse", rmse, targets, champion, candidate, rounds=300, margin=0.1)
    tight = paired_bootstrap("rmse", rmse, targets, champion, candidate, rounds=300, margin=0.0)
    assert loose.p_not_worse < 0.01 < tight.p_not_worse  # within 0.1 of its RMSE, surely; not better
    assert loose.margin == 0.1 and paired_bootstrap("rmse", rmse, targets, champion, candidate, 100).p_not_worse is None
