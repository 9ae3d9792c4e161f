"""Pure decisions of the monitor: windows over served rows, debouncing, submission ids."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd


def verdict(drift: bool | None) -> str:
    """A window's decision in words: "drift", "ok", or "no decision" (too few rows, or undefined)."""
    return "no decision" if drift is None else "drift" if drift else "ok"


@dataclass(frozen=True)
class Window:
    start: datetime  # time of the first row
    end: datetime  # time of the last row; the next window starts strictly after it
    rows: pd.DataFrame
    decidable: bool


def row_windows(rows: pd.DataFrame, size: int, cut: Sequence[str], order: Sequence[str] = ()) -> list[Window]:
    """Full windows of at least `size` rows, ordered by the `cut` columns then `order`, and cut only
    where a `cut` value changes (rows that share them, e.g. a request's rows with their timestamp,
    never straddle two windows). Leftover rows wait for the next call. Window bounds are the first
    `cut` column's first and last values."""
    ordered = rows.sort_values([*cut, *order], kind="stable").reset_index(drop=True)
    keys = list(ordered[list(cut)].itertuples(index=False, name=None))
    windows, begin = [], 0
    while begin + size <= len(ordered):
        stop = begin + size
        while stop < len(ordered) and keys[stop] == keys[stop - 1]:
            stop += 1
        chunk = ordered.iloc[begin:stop]
        windows.append(Window(chunk[cut[0]].iloc[0], chunk[cut[0]].iloc[-1], chunk, True))
        begin = stop
    return windows


def time_windows(
    rows: pd.DataFrame, time_column: str, seconds: float, min_rows: int, after: datetime, now: datetime
) -> list[Window]:
    """Closed windows [after + i*seconds, after + (i+1)*seconds) that ended before `now`; one with
    fewer than min_rows rows is returned undecidable rather than judged on too little data."""
    windows, start = [], after
    step = pd.Timedelta(seconds=seconds)
    while start + step <= now:
        end = start + step
        chunk = rows[(rows[time_column] > start) & (rows[time_column] <= end)]
        windows.append(Window(start, end, chunk, len(chunk) >= min_rows))
        start = end
    return windows


def should_retrain(decisions: Sequence[bool | None], k: int, n: int) -> bool:
    """Drift in at least k of the last n decided windows (undecided windows are skipped)."""
    decided = [d for d in decisions if d is not None][-n:]
    return sum(decided) >= k


def drift_start(windows: Sequence[tuple[bool | None, datetime]], k: int, n: int) -> datetime | None:
    """None unless k of the last n decided windows drifted; then when that drift began: the data
    start of the first drifted window among them (windows oldest first, as (drifted, data start))."""
    decided = [(d, start) for d, start in windows if d is not None][-n:]
    if not should_retrain([d for d, _ in decided], k, n):
        return None
    return next(start for d, start in decided if d)


def trigger_start(
    windows_by_kind: dict[str, Sequence[tuple[bool | None, datetime]]], k: int, n: int
) -> datetime | None:
    """Debounced per kind of window (served traffic, labelled performance): calm traffic windows must
    not outvote labels that show the model is wrong. The earliest start among the kinds that trigger."""
    starts = [start for windows in windows_by_kind.values() if (start := drift_start(windows, k, n)) is not None]
    return min(starts) if starts else None


def submission_id(model_name: str, version: str, attempt: int) -> str:
    """Deterministic per champion version and attempt: two monitors that see the same attempts
    produce the same id, and the Jobs API refuses the second submission."""
    return f"{submission_prefix(model_name, version)}{attempt}"


def submission_prefix(model_name: str, version: str) -> str:
    return f"lakeloop-retrain-{re.sub(r'[^A-Za-z0-9_-]', '-', model_name)}-v{version}-"
