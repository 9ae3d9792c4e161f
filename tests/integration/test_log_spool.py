"""The prediction log's spool against real Delta tables on disk: every accepted row lands exactly once,
through process kills, storage outages and rows that can never be written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.adapters import delta
from pipelines.adapters.log_spool import LogSpool, SpoolFull, _segments, read_segment
from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row
from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def rows(n: int, start: int = 0) -> list[dict]:
    return [feedback_row(f"r{start + i}", 0, i % 2, datetime.now(UTC)) for i in range(n)]


def spool(tmp_path: Path, uri: str, **options) -> LogSpool:
    settings = {"flush_rows": 1000, "flush_interval_s": 3600, "max_spool_bytes": 1 << 20, **options}
    return LogSpool(
        delta.Table(uri),
        FEEDBACK_SCHEMA,
        tmp_path / "spool",
        settings["flush_rows"],
        settings["flush_interval_s"],
        settings["max_spool_bytes"],
    )


def ids(uri: str) -> list[str]:
    table = delta.Table(uri).read(columns=["request_id"])
    return [] if table is None else sorted(table.column(0).to_pylist())


def test_rows_are_committed_once_and_a_closed_spool_leaves_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "feedback")
    log = spool(tmp_path, uri)
    log.add(rows(30))
    assert log.flush() == 30 and log.flush() == 0
    log.add(rows(5, start=30))
    log.close()
    assert ids(uri) == sorted(f"r{i}" for i in range(35))
    assert log.snapshot()["pending"] == 0
    assert not list((tmp_path / "spool").rglob("*.jsonl"))


KILLED_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
from pathlib import Path
from pipelines.adapters import delta
from pipelines.adapters.log_spool import LogSpool
from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row
uri, root = sys.argv[1:]
log = LogSpool(delta.Table(uri), FEEDBACK_SCHEMA, Path(root), 1000, 3600, 1 << 20)
log.add([feedback_row(f"k{i}", 0, 1, datetime.now(UTC)) for i in range(40)])
log.flush()  # 40 rows committed
log.add([feedback_row(f"k{i}", 0, 1, datetime.now(UTC)) for i in range(40, 100)])
os.kill(os.getpid(), signal.SIGKILL)  # 60 rows only in the spool
"""


def test_a_killed_writers_spool_is_adopted_and_nothing_is_lost_or_doubled(tmp_path: Path) -> None:
    uri = str(tmp_path / "feedback")
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, uri, str(tmp_path / "spool")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    assert len(ids(uri)) == 40
    heir = spool(tmp_path, uri)  # a later replica: adopts what the dead one left
    assert heir.adopt() == 60
    assert ids(uri) == sorted(f"k{i}" for i in range(100))
    heir.close()


def test_a_segment_committed_before_a_crash_is_not_committed_again(tmp_path: Path) -> None:
    uri = str(tmp_path / "feedback")
    log = spool(tmp_path, uri)
    log.add(rows(10))
    log._rotate()
    (number, path), *_ = _segments(log.directory)
    saved = path.read_bytes()
    log.flush()
    path.write_bytes(saved)  # as if the process died after the commit and before deleting the file
    log.flush()
    assert ids(uri) == sorted(f"r{i}" for i in range(10))
    log.close()


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "seg-000000000001.jsonl"
    path.write_bytes(b'{"request_id": "a", "row": 0}\n{"request_id": "b", "ro')
    assert read_segment(path) == [{"request_id": "a", "row": 0}]


def test_a_row_that_can_never_be_written_goes_to_the_dead_letter_table_and_blocks_nothing(tmp_path: Path) -> None:
    uri = str(tmp_path / "feedback")
    log = spool(tmp_path, uri)
    bad = feedback_row("too-far", 2**31, 1, datetime.now(UTC))  # overflows the int32 row column
    log.add([*rows(3), bad, *rows(3, start=3)])
    assert log.flush() == 6
    assert ids(uri) == sorted(f"r{i}" for i in range(6))
    letters = delta.Table(uri).dead_letter().read().to_pylist()
    assert len(letters) == 1 and "too-far" in letters[0]["row_json"]
    assert letters[0]["reason"].startswith("column 'row' (int32): ")
    assert log.snapshot()["dead_lettered"] == 1 and log.pending() == 0
    log.close()


def test_a_changed_feature_set_evolves_the_schema_and_a_changed_type_is_dead_lettered(tmp_path: Path) -> None:
    uri = str(tmp_path / "predictions")
    delta.Table(uri).append(
        pa.table({"request_id": ["old"], "row": pa.array([0], pa.int32()), "plan": ["basic"], "age": [40.0]})
    )
    wider = pa.schema(
        [
            pa.field("request_id", pa.string()),
            pa.field("row", pa.int32()),
            pa.field("age", pa.float64()),
            pa.field("region", pa.string()),
        ]
    )  # plan gone, region added
    log = LogSpool(delta.Table(uri), wider, tmp_path / "spool", 1000, 3600, 1 << 20)
    log.add([{"request_id": "new", "row": 0, "age": 30.0, "region": "north"}])
    assert log.flush() == 1
    table = delta.Table(uri).read().to_pylist()
    assert {r["request_id"]: (r["plan"], r["region"]) for r in table} == {
        "old": ("basic", None),
        "new": (None, "north"),
    }
    log.close()
    clashing = pa.schema(
        [pa.field("request_id", pa.string()), pa.field("row", pa.int32()), pa.field("age", pa.string())]
    )  # age became categorical; the table holds numbers
    log = LogSpool(delta.Table(uri), clashing, tmp_path / "spool", 1000, 3600, 1 << 20)
    log.add([{"request_id": "clash", "row": 0, "age": "forty"}])
    log.flush()
    assert "clash" not in ids(uri) and "clash" in delta.Table(uri).dead_letter().read().to_pylist()[0]["row_json"]
    log.close()


def test_during_a_storage_outage_memory_stays_bounded_the_spool_refuses_past_its_bound_and_nothing_is_lost(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "not-a-directory"
    broken.write_text("storage is down")
    uri = str(broken / "feedback")  # every write fails: its parent is a file
    log = spool(tmp_path, uri, max_spool_bytes=20_000)
    accepted = 0
    with pytest.raises(SpoolFull, match="wait for storage"):
        for i in range(1000):
            log.add(rows(1, start=i))
            accepted += 1
            if i % 50 == 0:
                log.flush()  # fails, keeps the segments
    assert 100 < accepted < 1000 and log.snapshot()["failed_commits"] > 0
    broken.unlink()  # storage is back
    broken.mkdir()
    log.flush()
    assert ids(uri) == sorted(f"r{i}" for i in range(accepted))
    log.close()
    shutil.rmtree(tmp_path / "spool", ignore_errors=True)
