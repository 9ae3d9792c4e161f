"""Windowing, debouncing and submission ids of the monitor: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines.core.drift_policy import (
    drift_start,
    row_windows,
    should_retrain,
    submission_id,
    submission_prefix,
    time_windows,
    trigger_start,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def served(requests: list[tuple[int, int]]) -> pd.DataFrame:
    """(second offset, rows in the request) -> prediction rows sharing the request's timestamp."""
    rows = [
        {"request_id": f"r{i}", "row": j, "served_at": T0 + timedelta(seconds=s)}
        for i, (s, n) in enumerate(requests)
        for j in range(n)
    ]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # arrival order must not matter


def test_row_windows_never_split_a_request_and_keep_leftovers() -> None:
    windows = row_windows(served([(1, 3), (2, 3), (3, 3), (4, 3), (5, 1)]), 5, ["served_at"], ["request_id", "row"])
    assert [len(w.rows) for w in windows] == [6, 6]  # cut after whole requests
    assert windows[0].end < windows[1].start
    assert all(w.rows.groupby("request_id").size().eq(3).all() for w in windows)
    # the single leftover row waits for a later window


def test_restarting_after_the_last_window_end_neither_skips_nor_repeats() -> None:
    rows = served([(s, 2) for s in range(1, 21)])
    first = row_windows(rows, 10, ["served_at"], ["request_id", "row"])
    later = row_windows(rows[rows["served_at"] > first[-1].end], 10, ["served_at"], ["request_id", "row"])
    seen = pd.concat([w.rows for w in first + later])
    assert len(seen) == len(rows) - len(rows[rows["served_at"] > (first + later)[-1].end])
    assert not seen.duplicated(["request_id", "row"]).any()


def test_time_windows_with_too_few_rows_are_undecidable() -> None:
    rows = served([(10, 50), (70, 2)])
    windows = time_windows(rows, "served_at", 60, min_rows=10, after=T0, now=T0 + timedelta(seconds=130))
    assert [(len(w.rows), w.decidable) for w in windows] == [(50, True), (2, False)]
    assert windows[1].end == T0 + timedelta(seconds=120)  # the open window (120-130 s) is not judged yet


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ([True, True], True),
        ([True, False, True], True),
        ([True, False, False, True], False),  # only the last 3 decided windows count
        ([True, None, True], True),  # undecided windows are skipped, not counted as calm
        ([False, False, True], False),
        ([], False),
    ],
)
def test_debounce_k_of_n(decisions: list, expected: bool) -> None:
    assert should_retrain(decisions, k=2, n=3) is expected


def test_submission_ids_are_deterministic_and_scoped_to_the_champion_and_attempt() -> None:
    first = submission_id("lakeloop/churn", "3", 1)
    assert first == submission_id("lakeloop/churn", "3", 1)
    assert first != submission_id("lakeloop/churn", "4", 1)
    assert first != submission_id("lakeloop/churn", "3", 2)
    assert first.startswith(submission_prefix("lakeloop/churn", "3")) and "/" not in first


def test_drift_start_is_the_first_drifted_window_of_the_trigger() -> None:
    at = [T0 + timedelta(minutes=m) for m in range(6)]
    assert drift_start([(False, at[0]), (False, at[1]), (True, at[2]), (None, at[3]), (True, at[4])], 2, 3) == at[2]
    # an old drifted window outside the last n decided ones does not count, nor set the start
    assert drift_start([(True, at[0]), (False, at[1]), (False, at[2]), (True, at[3])], 2, 3) is None
    assert drift_start([(True, at[0]), (False, at[1]), (True, at[2]), (True, at[3])], 2, 3) == at[2]
    assert drift_start([], 2, 3) is None


def test_calm_traffic_windows_do_not_outvote_performance_drift() -> None:
    at = [T0 + timedelta(minutes=m) for m in range(8)]
    traffic = [(False, at[0]), (False, at[2]), (False, at[3]), (False, at[5]), (False, at[6])]
    performance = [(False, at[1]), (True, at[4]), (True, at[7])]
    assert trigger_start({"traffic": traffic, "performance": performance}, 2, 3) == at[4]
    # merged into one sequence, the calm traffic windows would have hidden it
    merged = sorted(traffic + performance, key=lambda w: w[1])
    assert drift_start(merged, 2, 3) is None
    assert trigger_start({"traffic": traffic}, 2, 3) is None
    both = {"traffic": [(True, at[3]), (True, at[6])], "performance": performance}
    assert trigger_start(both, 2, 3) == at[3]  # the earliest start among the kinds that trigger
