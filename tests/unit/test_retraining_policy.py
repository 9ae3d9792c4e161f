"""The retraining loop's decisions: attempts from their events, retry with backoff, degraded at the cap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipelines.core.config import LearningConfig, RetryConfig
from pipelines.core.retraining_policy import (
    Attempt,
    Regime,
    fold_attempts,
    health,
    plan_retraining,
    rows_needed,
)

RETRY = RetryConfig(after_rows=200, backoff=2.0, max_attempts=3, tune_from_attempt=2)
T0 = datetime(2026, 5, 1, tzinfo=UTC)


def event(attempt: int, kind: str, minute: int, rows: int = 1000, **extra) -> dict:
    return {
        "attempt": attempt,
        "event": kind,
        "at": T0 + timedelta(minutes=minute),
        "submission_id": f"s{attempt}",
        "tune": attempt > 1,
        "training_rows": rows,
        **extra,
    }


def refused(number: int, rows: int) -> Attempt:
    return Attempt(number, f"s{number}", number > 1, rows, "refused", "below the floor")


def test_no_drift_and_no_attempts_does_nothing() -> None:
    assert plan_retraining([], False, 1000, RETRY).action == "none"


def test_drift_submits_the_first_attempt_without_tuning() -> None:
    plan = plan_retraining([], True, 1000, RETRY)
    assert (plan.action, plan.attempt, plan.tune) == ("submit", 1, False)


def test_a_running_attempt_is_waited_for() -> None:
    running = Attempt(1, "s1", False, 1000, "submitted")
    plan = plan_retraining([running], True, 5000, RETRY)
    assert plan.action == "wait" and "still running" in plan.reason


def test_an_online_candidate_is_waited_for_then_its_online_outcome_counts() -> None:
    events = [event(1, "submitted", 1), event(1, "candidate", 5, candidate_version="7")]
    plan = plan_retraining(fold_attempts(events), True, 5000, RETRY)
    assert plan.action == "wait" and "version 7 is on live traffic" in plan.reason
    retired = fold_attempts([*events, event(1, "refused", 9, reason="online gate: worse", candidate_version="7")])
    assert retired[0].outcome == "refused"
    assert plan_retraining(retired, True, 5000, RETRY).action == "submit"  # a retry, as after an offline refusal
    events += [event(1, "promoted", 9, candidate_version="7"), event(0, "online_retired", 10, candidate_version="8")]
    assert [a.outcome for a in fold_attempts(events)] == ["promoted"]  # events about the champion are no attempt


def test_a_refused_attempt_is_retried_only_after_enough_new_rows_and_then_tunes() -> None:
    waiting = plan_retraining([refused(1, 1000)], True, 1199, RETRY)
    assert waiting.action == "wait" and "1 more training rows" in waiting.reason
    retry = plan_retraining([refused(1, 1000)], True, 1200, RETRY)
    assert (retry.action, retry.attempt, retry.tune) == ("submit", 2, True)
    assert "below the floor" in retry.reason


def test_backoff_grows_the_rows_needed_per_attempt() -> None:
    assert [rows_needed(RETRY, n) for n in (1, 2, 3)] == [200, 400, 800]
    attempts = [refused(1, 1000), refused(2, 1200)]
    assert plan_retraining(attempts, True, 1599, RETRY).action == "wait"
    assert plan_retraining(attempts, True, 1600, RETRY).attempt == 3


def test_the_cap_makes_the_loop_degraded_not_quiet() -> None:
    attempts = [refused(1, 1000), refused(2, 1200), refused(3, 1600)]
    plan = plan_retraining(attempts, True, 100_000, RETRY)
    assert plan.action == "degraded"
    assert "3 retraining attempts" in plan.reason and "below the floor" in plan.reason


def test_a_refused_attempt_is_not_retried_once_the_drift_has_passed() -> None:
    assert plan_retraining([refused(1, 1000)], False, 5000, RETRY).action == "none"


def test_a_failed_job_counts_as_an_attempt() -> None:
    failed = Attempt(1, "s1", False, 1000, "failed", "job FAILED: out of memory")
    plan = plan_retraining([failed], True, 1200, RETRY)
    assert plan.action == "submit" and "out of memory" in plan.reason


def test_fold_takes_the_newest_outcome_and_the_submission_facts() -> None:
    events = [
        event(2, "submitted", 5, rows=1300),
        event(1, "refused", 3, reason="worse", candidate_version="4"),
        event(1, "submitted", 1, rows=1000),
        event(2, "submitted", 6, rows=9999),
    ]  # a duplicate submission
    attempts = fold_attempts(events)
    assert [(a.number, a.outcome, a.training_rows) for a in attempts] == [(1, "refused", 1000), (2, "submitted", 1300)]
    assert attempts[0].reason == "worse" and attempts[0].candidate_version == "4"


def test_health_follows_the_newest_degraded_or_recovered_event() -> None:
    degraded = {"attempt": 0, "event": "degraded", "at": T0, "reason": "3 attempts"}
    assert health([degraded]) == (True, "3 attempts")
    assert health([degraded, {"attempt": 0, "event": "recovered", "at": T0 + timedelta(hours=1)}]) == (False, "")
    assert health([event(1, "refused", 1)]) == (False, "")


LEARN = LearningConfig(enabled=True, growth=2.0, min_rows=200)
REGIME = Regime("2026-05-01T00:00:00+00:00", 600)  # a champion trained on 600 rows since the drift began


def learn_attempt(number: int, rows: int, outcome: str, reason: str = "") -> Attempt:
    return Attempt(number, f"s{number}", False, rows, outcome, reason, trigger="learn")


def test_without_a_regime_calm_traffic_never_starts_learning() -> None:
    assert plan_retraining([], False, 10_000, RETRY, Regime(), 0, LEARN).action == "none"


def test_a_champion_of_a_regime_is_retrained_each_time_its_labelled_rows_double() -> None:
    waiting = plan_retraining([], False, 5000, RETRY, REGIME, 1199, LEARN)
    assert waiting.action == "none" and "next retraining at 1,200 labelled rows" in waiting.reason
    due = plan_retraining([], False, 5000, RETRY, REGIME, 1200, LEARN)
    assert (due.action, due.trigger, due.attempt, due.tune) == ("submit", "learn", 1, False)


def test_learning_waits_for_a_running_attempt_and_stops_at_a_plateau() -> None:
    running = learn_attempt(1, 1200, "submitted")
    assert plan_retraining([running], False, 5000, RETRY, REGIME, 5000, LEARN).action == "wait"
    refused = learn_attempt(1, 1200, "refused", "roc_auc 0.91 does not beat champion 0.91")
    plateau = plan_retraining([refused], False, 5000, RETRY, REGIME, 50_000, LEARN)
    assert plateau.action == "none" and "plateau" in plateau.reason


def test_a_failed_learning_attempt_is_tried_again_when_the_rows_double_again() -> None:
    failed = learn_attempt(1, 1300, "failed", "job FAILED")
    assert plan_retraining([failed], False, 5000, RETRY, REGIME, 2599, LEARN).action == "none"
    again = plan_retraining([failed], False, 5000, RETRY, REGIME, 2600, LEARN)
    assert (again.action, again.attempt) == ("submit", 2)


def test_drift_takes_over_from_learning_and_learning_can_be_switched_off() -> None:
    refused = learn_attempt(1, 1200, "refused")
    drift = plan_retraining([refused], True, 5000, RETRY, REGIME, 50_000, LEARN)
    assert (drift.action, drift.trigger, drift.attempt) == ("submit", "drift", 2)
    off = LearningConfig(enabled=False)
    assert plan_retraining([], False, 5000, RETRY, REGIME, 50_000, off).action == "none"


def test_the_attempts_trigger_is_read_from_its_first_event() -> None:
    events = [event(1, "submitted", 0, trigger="learn"), event(1, "refused", 5)]
    assert fold_attempts(events)[0].trigger == "learn"
    assert fold_attempts([event(2, "submitted", 0)])[0].trigger == "drift"  # written before triggers existed
