"""Pure decisions of the retraining loop: what happened to each attempt, and what to do next.

Every attempt for a champion is an event log (submitted, then promoted, refused or failed; with the
online gate on, candidate in between: its version is scored on live traffic until promoted or refused); the
monitor folds it, then asks `plan_retraining` whether to submit, wait, or report the loop degraded.

After drift: a refused candidate is not a live job: the loop tries again once `retry.after_rows` new
training rows have arrived (times `retry.backoff` per further attempt), escalates to a
hyperparameter search from `retry.tune_from_attempt`, and after `retry.max_attempts` says it is
degraded instead of going quiet.

Keep learning: a champion trained on the rows since a drift began (its regime) is retrained again
once the regime's labelled rows have grown `learning.growth` times (2: each time they double), through
the same gate; the first such candidate that does not beat it by gate.min_improvement ends the
learning for that champion (a plateau). Calm traffic with no drift never starts it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pipelines.core.config import LearningConfig, RetryConfig

SUBMITTED, PROMOTED, REFUSED, FAILED = "submitted", "promoted", "refused", "failed"
CANDIDATE = "candidate"  # passed the offline gate; the online gate decides (then promoted or refused)
# why an attempt ran: drift (the first after a trigger), retry (after a refused or failed one), learn
# (more labelled rows of the regime), release (a code change), manual
DRIFT, RETRY, LEARN, RELEASE, MANUAL = "drift", "retry", "learn", "release", "manual"
TRIGGERS = (DRIFT, RETRY, LEARN, RELEASE, MANUAL)
DEGRADED, RECOVERED = "degraded", "recovered"  # events about the champion, not about one attempt
OUTCOMES = (CANDIDATE, PROMOTED, REFUSED, FAILED)


@dataclass(frozen=True)
class Attempt:
    number: int
    submission_id: str
    tune: bool
    training_rows: int  # rows in the training sources when it was submitted
    outcome: str  # submitted (still running), promoted, refused or failed
    reason: str = ""
    candidate_version: str | None = None
    trigger: str = DRIFT


@dataclass(frozen=True)
class RetrainingPlan:
    action: Literal["none", "wait", "submit", "degraded"]
    reason: str = ""
    attempt: int = 0  # the attempt to submit
    tune: bool = False
    trigger: str = DRIFT


def fold_attempts(events: Iterable[Mapping]) -> list[Attempt]:
    """The newest state of each attempt from its events (rows of the attempts table, any order)."""
    latest: dict[int, Mapping] = {}
    first: dict[int, Mapping] = {}
    for event in sorted((e for e in events if e["event"] in (SUBMITTED, *OUTCOMES)), key=lambda e: e["at"]):
        number = int(event["attempt"])
        first.setdefault(number, event)
        if event["event"] != SUBMITTED or number not in latest:
            latest[number] = event
    return [
        Attempt(
            number,
            first[number]["submission_id"],
            bool(first[number]["tune"]),
            int(first[number]["training_rows"]),
            latest[number]["event"],
            latest[number].get("reason") or "",
            latest[number].get("candidate_version"),
            first[number].get("trigger") or DRIFT,
        )
        for number in sorted(latest)
    ]


def health(events: Iterable[Mapping]) -> tuple[bool, str]:
    """(degraded, reason) from the newest degraded/recovered event."""
    marks = sorted((e for e in events if e["event"] in (DEGRADED, RECOVERED)), key=lambda e: e["at"])
    if not marks or marks[-1]["event"] != DEGRADED:
        return False, ""
    return True, marks[-1].get("reason") or ""


def rows_needed(retry: RetryConfig, attempts_made: int) -> int:
    """New training rows that must arrive after attempt `attempts_made` before the next one."""
    return math.ceil(retry.after_rows * retry.backoff ** max(attempts_made - 1, 0))


@dataclass(frozen=True)
class Regime:
    """The regime a champion was trained for: the rows since a drift began (None: all rows, no drift)."""

    start: str | None = None  # ISO time
    rows: int = 0  # rows of the regime it was trained on


def plan_retraining(
    attempts: list[Attempt],
    triggered: bool,
    training_rows: int,
    retry: RetryConfig,
    regime: Regime = Regime(),
    regime_rows: int = 0,
    learning: LearningConfig | None = None,
) -> RetrainingPlan:
    """What the monitor does now for this champion, and why: after drift, retry or report degraded;
    without drift, keep learning while the champion's regime grows (`regime_rows`: its rows now)."""
    if attempts and attempts[-1].outcome == SUBMITTED:
        last = attempts[-1]
        return RetrainingPlan("wait", f"attempt {last.number} ({last.submission_id}) is still running")
    if attempts and attempts[-1].outcome == CANDIDATE:
        last = attempts[-1]
        return RetrainingPlan(
            "wait", f"attempt {last.number}'s version {last.candidate_version} is on live traffic (the online gate)"
        )
    number = len(attempts) + 1
    drift_plan = _after_drift([a for a in attempts if a.trigger != LEARN], triggered, training_rows, retry, number)
    if triggered or drift_plan.action != "none" or learning is None or not learning.enabled or regime.start is None:
        return drift_plan
    return _keep_learning([a for a in attempts if a.trigger == LEARN], regime, regime_rows, learning, number)


def _told(attempt: Attempt) -> str:
    return f"attempt {attempt.number} {attempt.outcome}: {attempt.reason}"


def _after_drift(
    attempts: list[Attempt], triggered: bool, training_rows: int, retry: RetryConfig, number: int
) -> RetrainingPlan:
    if not attempts:
        if not triggered:
            return RetrainingPlan("none")
        return RetrainingPlan(
            "submit", "drift: first retraining for this champion", number, retry.tune_from_attempt <= 1
        )
    last = attempts[-1]
    if last.outcome == PROMOTED:
        return RetrainingPlan("none", f"attempt {last.number} promoted version {last.candidate_version}")
    told = _told(last)
    if not triggered:
        return RetrainingPlan("none", f"{told}; recent windows no longer call for retraining")
    if len(attempts) >= retry.max_attempts:
        return RetrainingPlan(
            "degraded",
            f"the champion is failing on recent data and {len(attempts)} retraining "
            f"attempts (monitor.retry.max_attempts) did not replace it; last {told}",
        )
    missing = rows_needed(retry, len(attempts)) - (training_rows - last.training_rows)
    if missing > 0:
        return RetrainingPlan("wait", f"{told}; retrying once {missing} more training rows have arrived")
    tune = len(attempts) + 1 >= retry.tune_from_attempt
    return RetrainingPlan("submit", f"retry after {told}", number, tune, RETRY)


def learning_target(regime: Regime, attempts: list[Attempt], learning: LearningConfig) -> int:
    """Labelled rows of the regime at which the next learning attempt runs: growth times the rows the
    champion was trained on (or the last failed attempt had)."""
    base = max(regime.rows, learning.min_rows, *(a.training_rows for a in attempts if a.outcome == FAILED))
    return math.ceil(base * learning.growth)


def _keep_learning(
    attempts: list[Attempt], regime: Regime, rows: int, learning: LearningConfig, number: int
) -> RetrainingPlan:
    if attempts and attempts[-1].outcome == REFUSED:
        last = attempts[-1]
        return RetrainingPlan(
            "none",
            f"learning stopped at a plateau: attempt {last.number} on {last.training_rows} rows of the regime "
            f"did not beat the champion ({last.reason})",
        )
    target = learning_target(regime, attempts, learning)
    if rows < target:
        return RetrainingPlan(
            "none", f"next retraining at {target:,} labelled rows of the regime since {regime.start} ({rows:,} now)"
        )
    return RetrainingPlan(
        "submit",
        f"keep learning: {rows:,} labelled rows of the regime, {learning.growth:g}x the {regime.rows:,} "
        "the champion was trained on",
        number,
        False,
        LEARN,
    )
