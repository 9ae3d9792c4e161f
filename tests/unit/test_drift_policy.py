"""Windowing, debouncing and submission ids of the monitor: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines.drift_policy import row_windows, should_retrain, submission_id, submission_prefix, time_windows

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def served(requests: list[tuple[int, int]]) -> pd.DataFrame:
    """(second offset, rows in the request) -> prediction rows sharing the request's timestamp."""
    rows = [{"request_id": f"r{i}", "row": j, "served_at": T0 + timedelta(seconds=s)}
            for i, (s, n) in enumerate(requests) for j in range(n)]
    return pd.DataFrame(rows).sample(frac=1, random_state=0)  # arrival order must not matter


def test_row_windows_never_split_a_request_and_keep_leftovers() -> None:
    windows = row_windows(served([(1, 3), (2, 3), (3, 3), (4, 3), (5, 1)]), size=5)
    assert [len(w.rows) for w in windows] == [6, 6]  # cut after whole requests
    assert windows[0].end < windows[1].start
    assert all(w.rows.groupby("request_id").size().eq(3).all() for w in windows)
    # the single leftover row waits for a later window


def test_restarting_after_the_last_window_end_neither_skips_nor_repeats() -> None:
    rows = served([(s, 2) for s in range(1, 21)])
    first = row_windows(rows, size=10)
    later = row_windows(rows[rows["served_at"] > first[-1].end], size=10)
    seen = pd.concat([w.rows for w in first + later])
    assert len(seen) == len(rows) - len(rows[rows["served_at"] > (first + later)[-1].end])
    assert not seen.duplicated(["request_id", "row"]).any()


def test_time_windows_with_too_few_rows_are_undecidable() -> None:
    rows = served([(10, 50), (70, 2)])
    windows = time_windows(rows, 60, min_rows=10, after=T0, now=T0 + timedelta(seconds=130))
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


def test_submission_ids_are_deterministic_and_scoped_to_the_champion() -> None:
    end = T0 + timedelta(minutes=5)
    first = submission_id("lakeloop/churn", "3", end)
    assert first == submission_id("lakeloop/churn", "3", end)
    assert first != submission_id("lakeloop/churn", "4", end)
    assert first != submission_id("lakeloop/churn", "3", end + timedelta(seconds=1))
    assert first.startswith(submission_prefix("lakeloop/churn", "3")) and "/" not in first
