"""Read times of a predictions table before and after `lakeloop data maintain` (compaction, a log
checkpoint, vacuum), at 1,000 and 10,000 commits of 10 rows: what a replica's log becomes after an
hour and after half a day of appends every 2 s.

    python -m benchmarks.table_upkeep [--commits 1000 10000]

Measured on local disk, the median of 3 reads each:
- a filtered read (one request's rows, what `GET`-style lookups and the feedback join do);
- the monitor's steady pass (the change feed of the last 10 commits, which upkeep keeps: the
  monitor has not read them);
- opening the table (log replay: what every reader pays first).
The table is built by one writer through lakeloop's own append (real commits).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc

from benchmarks.common import write_result
from benchmarks.object_store import appends

REPEATS = 3


def timed(work: Callable[[], object]) -> float:
    seconds = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def reads(uri: str) -> dict:
    from pipelines.adapters import delta

    newest = delta.Table(uri).version()
    one_request = pc.field("request_id") == "w1-c7"
    return {
        "open_ms": round(1000 * timed(lambda: delta.Table(uri).open()), 1),
        "filtered_read_ms": round(1000 * timed(lambda: delta.Table(uri).read(["row"], one_request)), 1),
        "monitor_steady_pass_ms": round(
            1000 * timed(lambda: delta.Table(uri).changes(newest - 10, ["request_id", "row"])), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.table_upkeep")
    parser.add_argument("--commits", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()

    from pipelines.adapters import delta

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for commits in args.commits:
            uri = str(Path(tmp) / f"predictions-{commits}")
            built = time.perf_counter()
            appends(uri, 1, commits, per_commit=10)  # one writer: 4 once ran out of delta-rs's 15 commit retries
            built = time.perf_counter() - built
            before = reads(uri)
            started = time.perf_counter()
            # as `lakeloop data maintain` runs it with a monitor 10 commits behind: those commits keep
            # their files (retention stretches back to the oldest unread one), so nothing is vacuumed
            # this soon after the appends; reads of the current version touch only the compacted files
            unread = delta.Table(uri).commit_time(delta.version(uri) - 10)
            upkeep = delta.Table(uri).maintain(retention_hours=0, keep_since=unread)
            maintain_s = time.perf_counter() - started
            after = reads(uri)
            row = {
                "commits": commits,
                "build_s": round(built, 1),
                "files_before": upkeep["files_before"],
                "files_after": upkeep["files_after"],
                "files_vacuumed": upkeep["files_vacuumed"],
                "maintain_s": round(maintain_s, 2),
                "before": before,
                "after": after,
                "speedup": {k: round(before[k] / max(after[k], 0.01), 1) for k in before},
            }
            results.append(row)
            print(row, flush=True)
    print(write_result("table_upkeep", {"tables": results}))


if __name__ == "__main__":
    main()
