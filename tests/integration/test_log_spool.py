"""The prediction log's spool against real Delta tables on disk: every accepted row lands exactly once,
through process kills, storage outages and rows that can never be written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.adapters import delta
from pipelines.adapters.log_spool import LogSpool, SpoolFull, _encode, _segments, read_segment
from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row
from tests.helpers import ROOT, tmpfs

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


def spooled(row: dict) -> str:
    """A row as a spool segment holds it (another process's segment, planted)."""
    return json.dumps({k: _encode(v) for k, v in row.items()}) + "\n"


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


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs (a real file system that fills), unmounted afterwards."""
    with tmpfs(tmp_path / "small-disk", "1m") as mount:
        yield mount


def test_a_full_disk_refuses_a_write_whole_and_every_accepted_row_is_committed_once(
    tmp_path: Path, small_disk: Path
) -> None:
    """The spool fills its disk (nothing committed meanwhile): the write that does not fit is refused
    whole (SpoolFull: the endpoint's 503), no torn row is left behind to swallow the next one, and once
    space is back every accepted row lands exactly once."""
    uri = str(tmp_path / "feedback")
    log = LogSpool(delta.Table(uri), FEEDBACK_SCHEMA, small_disk, 10**9, 3600, 1 << 30)
    accepted, refused = 0, 0
    for batch in range(4000):  # 1 MiB holds about 9,000 rows of this size
        try:
            log.add(rows(7, start=7 * batch))
            accepted += 7
        except SpoolFull:
            refused += 1
            if refused == 3:
                break
    assert refused == 3 and accepted > 0
    assert log.flush() == accepted  # commits free the disk ...
    log.add(rows(7, start=10**6))  # ... and writes are taken again
    log.close()
    assert len(ids(uri)) == len(set(ids(uri))) == accepted + 7


def test_the_spool_bound_covers_every_owner_on_the_node(tmp_path: Path) -> None:
    """A replica restarted during a storage outage finds its predecessor's segments waiting: together
    they stay within max_spool_bytes (each owner counting only its own let every restart add another)."""
    uri = str(tmp_path / "feedback")
    first = spool(tmp_path, uri, max_spool_bytes=64 * 1024)
    while True:
        try:
            first.add(rows(10))
        except SpoolFull:
            break
    first._lock_file.close()  # the replica dies: its spool stays, unlocked, for an adopter
    second = spool(tmp_path, uri, max_spool_bytes=64 * 1024)
    with pytest.raises(SpoolFull):
        second.add(rows(10))
    assert second.flush() == 0  # storage is back: nothing of its own, and the predecessor's rows land
    assert len(ids(uri)) == first.counts.accepted > 0
    second.add(rows(10))  # within the bound again
    second.close()


def test_the_flush_thread_survives_a_failing_spool_and_the_log_reports_itself_broken(tmp_path: Path) -> None:
    """An OSError in the flush path (here the spool directory disappears) must neither kill the flush
    thread nor turn every later request into a 500: writes are refused (503) and `broken` says why,
    until the spool has a directory again."""
    uri = str(tmp_path / "feedback")
    log = spool(tmp_path, uri)
    log.add(rows(5))
    shutil.rmtree(log.directory)
    log.flush()  # no exception escapes
    assert log.snapshot()["broken"] and "No such file" in log.snapshot()["last_error"]
    assert log._thread.is_alive()
    log.directory.mkdir(parents=True)  # an operator restores the directory
    log.add(rows(5, start=5))  # taken again: the spool reopened its segment
    assert not log.snapshot()["broken"]
    log.close()
    assert ids(uri) == sorted(f"r{i}" for i in range(5, 10))
    assert log.snapshot()["lost"] == 5 and log.snapshot()["pending"] == 0  # removed with the directory: counted


def test_the_spool_is_private_and_never_adopts_what_another_user_wrote(tmp_path: Path) -> None:
    uri = str(tmp_path / "feedback")
    log = spool(tmp_path, uri)
    assert (tmp_path / "spool").stat().st_mode & 0o077 == 0 and log.root.stat().st_mode & 0o077 == 0
    planted = log.root / "someone-else"
    planted.mkdir()
    (planted / "seg-000000000001.jsonl").write_text(spooled(rows(1, start=666)[0]))
    os.chown(planted, 65534, 65534)
    os.chown(planted / "seg-000000000001.jsonl", 65534, 65534)
    assert log.adopt() == 0
    log.close()
    assert "r666" not in ids(uri)


def test_adopted_rows_are_checked_as_served_ones_and_bad_ones_are_dead_lettered(tmp_path: Path) -> None:
    from pipelines.core.config import parse_config
    from serve.access import Access
    from serve.schemas import feedback_check
    from tests.helpers import demo_raw_config

    config = parse_config(demo_raw_config(tmp_path / "data"))
    access = Access.of("digest-of-the-api-key", None, config.mlflow.registered_model)
    uri = str(tmp_path / "feedback")
    check = feedback_check(config.dataset, 1000, access.issued)
    log = LogSpool(delta.Table(uri), FEEDBACK_SCHEMA, tmp_path / "spool", 1000, 3600, 1 << 20, check=check)
    dead = log.root / "dead-owner"
    dead.mkdir()
    good = {**rows(1, start=1)[0], "request_id": access.new_request_id()}
    not_a_class = {**good, "request_id": access.new_request_id(), "label": "maybe"}
    planted = {**good, "request_id": "f" * 40}  # the shape of an id, not one this endpoint issued
    (dead / "seg-000000000001.jsonl").write_text("".join(spooled(r) for r in (good, not_a_class, planted)))
    (dead / "owner.lock").touch()
    assert log.adopt() == 1
    log.close()
    assert ids(uri) == [good["request_id"]]
    letters = delta.Table(uri).dead_letter().read().to_pylist()
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(letters) == 2 and "label" in reasons[0] and "request_id" in reasons[1], reasons
