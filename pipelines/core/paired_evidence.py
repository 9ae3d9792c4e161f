"""Paired evidence between two models scored on the same labelled rows, and the online decision it
supports: promote the candidate, retire it, or wait for more pairs.

For accuracy, McNemar's exact test: only the rows where the two models disagree carry evidence, and
under "equally good" each such row is a fair coin. For every other metric, a paired bootstrap:
resample the rows, score both models on the same resample, and count how often the candidate's gain
is not positive. Both give one-sided p-values in each direction.

When the champion is failing (below its floor on the paired rows, after drift), a candidate that
is significantly not worse than it by a margin is promoted too (a non-inferiority test: the bootstrap
counts resamples where the candidate lost the margin or more); a promotion is then false when the
candidate is worse by the margin or more.

The decision looks at the evidence more than once (after every monitor pass), so each look spends an
equal share of the false-promotion rate (Bonferroni over the planned looks): however the looks fall,
as long as there are at most `looks` of them, a candidate no better than the champion is promoted with
probability at most `alpha`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from pipelines.core.config import OnlineGateConfig
from pipelines.core.metrics import greater_is_better


@dataclass(frozen=True)
class PairedEvidence:
    metric: str
    pairs: int
    champion: float  # the metric of each model on the paired rows
    candidate: float
    p_better: float  # one-sided: small when the candidate is better
    p_worse: float  # one-sided: small when the candidate is worse
    # with a non-inferiority margin (the champion below its floor): small when the candidate is not
    # worse than the champion by `margin` or more
    p_not_worse: float | None = None
    margin: float = 0.0


@dataclass(frozen=True)
class OnlineVerdict:
    action: str  # "promote", "retire" or "wait"
    reason: str


def mcnemar(champion_correct: np.ndarray, candidate_correct: np.ndarray) -> PairedEvidence:
    """Accuracy on paired rows (booleans: each model's answer was right) with McNemar's exact test."""
    champion_correct, candidate_correct = np.asarray(champion_correct, bool), np.asarray(candidate_correct, bool)
    if champion_correct.shape != candidate_correct.shape:
        raise ValueError("both models must be scored on the same rows")
    gains = int(np.sum(candidate_correct & ~champion_correct))  # only the candidate was right
    losses = int(np.sum(champion_correct & ~candidate_correct))
    discordant = gains + losses
    p_better = stats.binomtest(gains, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    p_worse = stats.binomtest(losses, discordant, 0.5, alternative="greater").pvalue if discordant else 1.0
    pairs = len(champion_correct)
    return PairedEvidence(
        "accuracy",
        pairs,
        float(champion_correct.mean()) if pairs else float("nan"),
        float(candidate_correct.mean()) if pairs else float("nan"),
        float(p_better),
        float(p_worse),
    )


def paired_bootstrap(
    metric: str,
    score: Callable[[np.ndarray, np.ndarray], float],
    targets: np.ndarray,
    champion_output: np.ndarray,
    candidate_output: np.ndarray,
    rounds: int = 2000,
    seed: int = 0,
    margin: float | None = None,
) -> PairedEvidence:
    """`score(targets, outputs) -> metric value` on the paired rows and on `rounds` resamples of them
    (the same resample for both models). p-values count resamples where the gain is not positive
    (or not negative), with the usual +1 so that none is ever 0; with a `margin`, p_not_worse counts
    those where the candidate lost `margin` or more."""
    targets, champion_output, candidate_output = map(np.asarray, (targets, champion_output, candidate_output))
    if not len(targets) == len(champion_output) == len(candidate_output):
        raise ValueError("both models must be scored on the same rows")
    sign = 1.0 if greater_is_better(metric) else -1.0
    rng = np.random.default_rng(seed)
    gains = np.empty(rounds)
    for i in range(rounds):
        rows = rng.integers(0, len(targets), len(targets))
        gains[i] = sign * (score(targets[rows], candidate_output[rows]) - score(targets[rows], champion_output[rows]))
    gains = gains[np.isfinite(gains)]  # a resample with one class has no AUC
    if not len(gains):
        return PairedEvidence(metric, len(targets), float("nan"), float("nan"), 1.0, 1.0)

    def p_value(count: int) -> float:
        return float((count + 1) / (len(gains) + 1))

    return PairedEvidence(
        metric,
        len(targets),
        float(score(targets, champion_output)),
        float(score(targets, candidate_output)),
        p_value(np.sum(gains <= 0)),
        p_value(np.sum(gains >= 0)),
        None if margin is None else p_value(np.sum(gains <= -margin)),
        margin or 0.0,
    )


def _share_right(_: np.ndarray, correct: np.ndarray) -> float:
    return float(np.mean(correct))


def not_worse_by(
    evidence: PairedEvidence,
    margin: float,
    champion_correct: np.ndarray,
    candidate_correct: np.ndarray,
    rounds: int,
    seed: int = 0,
) -> PairedEvidence:
    """McNemar's evidence on accuracy with a non-inferiority p-value added: a paired bootstrap of the
    accuracy difference (McNemar's test has no margin)."""
    rows = np.ones(len(champion_correct), bool)
    champion, candidate = np.asarray(champion_correct, bool), np.asarray(candidate_correct, bool)
    shifted = paired_bootstrap("accuracy", _share_right, rows, champion, candidate, rounds, seed, margin)
    return replace(evidence, p_not_worse=shifted.p_not_worse, margin=margin)


def verdict(evidence: PairedEvidence, alpha: float, min_pairs: int, max_pairs: int, looks: int) -> OnlineVerdict:
    """Promote when the candidate is significantly better at this look's share of `alpha`, retire it
    when significantly worse or when `max_pairs` brought no significant gain, else wait."""
    if not 0 < alpha < 1 or looks < 1 or not 0 < min_pairs <= max_pairs:
        raise ValueError("need 0 < alpha < 1, looks >= 1 and 0 < min_pairs <= max_pairs")
    level = alpha / looks
    seen = (
        f"{evidence.metric} {evidence.candidate:.4f} vs the champion's {evidence.champion:.4f} on "
        f"{evidence.pairs} labelled pairs"
    )
    if evidence.pairs < min_pairs:
        return OnlineVerdict("wait", f"{seen}: fewer than {min_pairs}")
    if evidence.p_better <= level:
        return OnlineVerdict("promote", f"{seen}: better, p={evidence.p_better:.4g} <= {level:.4g}")
    if evidence.p_not_worse is not None and evidence.p_not_worse <= level:
        return OnlineVerdict(
            "promote",
            (
                f"{seen}: the champion is below its floor and the candidate is not worse by "
                f"{evidence.margin:g} or more, p={evidence.p_not_worse:.4g} <= {level:.4g}"
            ),
        )
    if evidence.p_worse <= level:
        return OnlineVerdict("retire", f"{seen}: worse, p={evidence.p_worse:.4g} <= {level:.4g}")
    if evidence.pairs >= max_pairs:
        return OnlineVerdict("retire", f"{seen}: no significant gain within {max_pairs} (p={evidence.p_better:.4g})")
    return OnlineVerdict("wait", f"{seen}: not yet significant (p={evidence.p_better:.4g} > {level:.4g})")


def next_look(
    evidence: PairedEvidence | None, online: OnlineGateConfig, looks: int, last_pairs: int, max_pairs: int
) -> tuple[OnlineVerdict, int]:
    """What a monitor pass decides with the evidence it has: a look is spent (and the looks count
    returned grows) only when the pairs reached `min_pairs` and grew since the last look (`last_pairs`),
    so passes with no new labels cannot spend the false-promotion rate; at the last planned look a
    candidate with no significant gain is retired."""
    if evidence is None or evidence.pairs == 0:
        return OnlineVerdict("wait", "no labelled row scored by both models yet"), looks
    if evidence.pairs < online.min_pairs or evidence.pairs <= last_pairs:
        needed = max(online.min_pairs, last_pairs + 1)
        return OnlineVerdict("wait", f"{evidence.pairs} labelled pairs; the next look at {needed}"), looks
    decided = verdict(evidence, online.alpha, online.min_pairs, max_pairs, online.looks)
    looks += 1
    if decided.action == "wait" and looks >= online.looks:
        return OnlineVerdict(
            "retire", f"{decided.reason}; no significant gain in {looks} looks (gate.online.looks)"
        ), looks
    return decided, looks
