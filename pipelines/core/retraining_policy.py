"""Pure decisions of the retraining loop: what happened to each attempt, and what to do next.

Every attempt for a champion is an event log (submitted, then promoted, refused or failed); the
monitor folds it, then asks `plan_retraining` whether to submit, wait, or report the loop degraded.
A refused candidate is not a live job: the loop tries again once `retry.after_rows` new training
rows have arrived (times `retry.backoff` per further attempt), escalates to a hyperparameter search
from `retry.tune_from_attempt`, and after `retry.max_attempts` says it is degraded instead of going
quiet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pipelines.core.config import RetryConfig

SUBMITTED, PROMOTED, REFUSED, FAILED = "submitted", "promoted", "refused", "failed"
DEGRADED, RECOVERED = "degraded", "recovered"  # events about the champion, not about one attempt
OUTCOMES = (PROMOTED, REFUSED, FAILED)


@dataclass(frozen=True)
class Attempt:
    number: int
    submission_id: str
    tune: bool
    training_rows: int  # rows in the training sources when it was submitted
    outcome: str  # submitted (still running), promoted, refused or failed
    reason: str = ""
    candidate_version: str | None = None


@dataclass(frozen=True)
class RetrainingPlan:
    action: Literal["none", "wait", "submit", "degraded"]
    reason: str = ""
    attempt: int = 0  # the attempt to submit
    tune: bool = False


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


def plan_retraining(attempts: list[Attempt], triggered: bool, training_rows: int, retry: RetryConfig) -> RetrainingPlan:
    """What the monitor does now for this champion, and why."""
    if not attempts:
        if not triggered:
            return RetrainingPlan("none")
        return RetrainingPlan("submit", "drift: first retraining for this champion", 1, retry.tune_from_attempt <= 1)
    last = attempts[-1]
    if last.outcome == SUBMITTED:
        return RetrainingPlan("wait", f"attempt {last.number} ({last.submission_id}) is still running")
    if last.outcome == PROMOTED:
        return RetrainingPlan("none", f"attempt {last.number} promoted version {last.candidate_version}")
    told = f"attempt {last.number} {last.outcome}: {last.reason}"
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
    number = len(attempts) + 1
    return RetrainingPlan("submit", f"retry after {told}", number, number >= retry.tune_from_attempt)
