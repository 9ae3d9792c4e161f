"""A durable, bounded log of one Delta table, written by one process (a Serve replica).

Rows are appended to a local spool file before the response is sent: a process that is killed
(SIGKILL, OOM) loses nothing, because what it wrote is in the operating system's page cache. A
background thread closes a segment every `flush_rows` rows or `flush_interval_s` seconds and commits
it to Delta exactly once: each segment is one commit carrying a Delta app transaction (this owner,
the segment number), and a segment whose number the table has already seen is only deleted. A
process that finds the spool of a dead owner (its lock file is free) commits that spool the same
way, under the dead owner's id. What node loss can lose: the segments on that node's disk that were
not yet committed (at most `flush_rows` rows or `flush_interval_s` seconds of traffic per replica,
unless the spool directory is on storage another node can reach).

Memory holds no rows: during a storage outage segments accumulate on disk, and past
`max_spool_bytes` the log refuses new rows (`SpoolFull`: the endpoint answers 503 with Retry-After)
instead of losing any. A row that can never be written (a value its column cannot hold, a type the
table does not have) goes to the table's dead-letter table with the reason, and never blocks the
others; columns the table lacks are added (schema evolution), so a changed feature set keeps logging.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import DEAD_LETTER_SCHEMA, dead_letter_row
from pipelines.core.errors import LakeloopError

log = logging.getLogger("lakeloop.log")
SEGMENT_SUFFIX = ".jsonl"
LOCK_FILE = "owner.lock"


class SpoolFull(LakeloopError):
    """The spool holds `max_spool_bytes` of rows that storage has not accepted yet."""


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return {"$ts": int(value.timestamp() * 1_000_000)}
    return value


def _decode(value: object) -> object:
    if isinstance(value, dict) and "$ts" in value:
        return datetime.fromtimestamp(value["$ts"] / 1_000_000, tz=UTC)
    return value


def read_segment(path: Path) -> list[dict]:
    """The complete rows of a segment file; a line cut short by a kill mid-write is skipped."""
    rows = []
    with path.open("rb") as lines:
        for line in lines:
            if not line.endswith(b"\n"):
                break  # the writer died mid-line
            try:
                rows.append({k: _decode(v) for k, v in json.loads(line).items()})
            except json.JSONDecodeError:
                continue
    return rows


def to_table(rows: list[dict], schema: pa.Schema) -> tuple[pa.Table, list[tuple[dict, str]]]:
    """Rows that fit the schema as one table, and the others with the reason each does not."""
    try:
        return pa.Table.from_pylist(rows, schema=schema), []
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError):
        pass
    good, bad = [], []
    for row in rows:
        problem = _row_problem(row, schema)
        if problem:
            bad.append((row, problem))
        else:
            good.append(row)
    return pa.Table.from_pylist(good, schema=schema), bad


def _row_problem(row: dict, schema: pa.Schema) -> str | None:
    """Why a row does not fit the schema, naming the column; None if it does."""
    for column in schema:
        try:
            pa.array([row.get(column.name)], type=column.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError) as exc:
            return f"column '{column.name}' ({column.type}): {exc}"
        if row.get(column.name) is None and not column.nullable:
            return f"column '{column.name}': missing, and the column allows no nulls"
    return None


@dataclass
class Counts:
    accepted: int = 0  # rows this process added
    written: int = 0  # rows this process committed (its own or adopted)
    dead_lettered: int = 0
    adopted_segments: int = 0
    failed_commits: int = 0
    last_error: str | None = None
    extra: dict = field(default_factory=dict)


def commit_segment(target: delta.Table, schema: pa.Schema, owner: str, number: int, path: Path) -> tuple[int, int]:
    """Commit one segment exactly once; returns (rows written, rows dead-lettered). Raises on a
    storage error (the segment stays for the next attempt)."""
    app_id = f"lakeloop-log:{owner}"
    rows = read_segment(path)
    table, bad = to_table(rows, schema)
    written = 0
    if table.num_rows and (target.transaction_version(app_id) or -1) < number:
        try:
            target.append(table, merge_schema=True, transaction=(app_id, number), cdf=True)
            written = table.num_rows
        except delta.SchemaConflict as exc:  # a column changed type: the rows cannot join this table
            bad += [(row, str(exc)) for row in table.to_pylist()]
    dead, letters_table = 0, target.dead_letter()
    if bad and (letters_table.transaction_version(app_id) or -1) < number:
        letters = pa.Table.from_pylist(
            [dead_letter_row(target.uri, row, reason) for row, reason in bad], schema=DEAD_LETTER_SCHEMA
        )
        letters_table.append(letters, transaction=(app_id, number))
        dead = len(bad)
        log.warning(
            "%d rows for %s could not be written and went to %s: %s", dead, target.uri, letters_table.uri, bad[0][1]
        )
    path.unlink()
    return written, dead


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = [(int(p.stem.split("-")[1]), p) for p in directory.glob(f"seg-*{SEGMENT_SUFFIX}")]
    return sorted(found)


class LogSpool:
    def __init__(
        self,
        table: delta.Table,
        schema: pa.Schema,
        spool_dir: Path,
        flush_rows: int,
        flush_interval_s: float,
        max_spool_bytes: int,
        owner: str | None = None,
    ) -> None:
        self.table, self.schema, self.flush_rows, self.flush_interval_s = table, schema, flush_rows, flush_interval_s
        self.uri, self.max_spool_bytes = table.uri, max_spool_bytes
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.root = spool_dir / delta.table_key(table.uri)
        self.directory = self.root / self.owner
        self._lock_file = self._claim_directory()
        self.counts = Counts()
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._number, self._rows_in_segment, self._segment = 0, 0, None
        self._spooled_bytes = 0
        self._open_segment()
        self._wake, self._closed = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-spool-{self.root.name}", daemon=True)
        self._thread.start()

    def _claim_directory(self):
        """Lock this owner's spool directory for as long as the process lives. A new directory is
        created and locked under a hidden name, then renamed: an adopter never sees it unlocked."""
        if self.directory.exists():  # this owner's earlier spool (same id): take it over
            staging = self.directory
        else:
            staging = self.root / f".{self.owner}"
            staging.mkdir(parents=True, exist_ok=True)
        lock_file = (staging / LOCK_FILE).open("w")
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if staging != self.directory:
            staging.rename(self.directory)
        return lock_file

    def _open_segment(self) -> None:
        self._number += 1
        self._segment = (self.directory / f"seg-{self._number:012d}{SEGMENT_SUFFIX}").open("ab", buffering=0)
        self._rows_in_segment = 0

    def add(self, rows: list[dict]) -> None:
        """Write rows to the spool (they survive this process being killed) or raise SpoolFull."""
        data = b"".join(json.dumps({k: _encode(v) for k, v in row.items()}).encode() + b"\n" for row in rows)
        with self._lock:
            if self._spooled_bytes + len(data) > self.max_spool_bytes:
                raise SpoolFull(f"{self.uri}: {self._spooled_bytes} bytes wait for storage; try again later")
            self._segment.write(data)  # unbuffered: in the kernel before the response is sent
            self._spooled_bytes += len(data)
            self._rows_in_segment += len(rows)
            self.counts.accepted += len(rows)
            full = self._rows_in_segment >= self.flush_rows
        if full:
            self._wake.set()

    def pending(self) -> int:
        """Rows spooled and not yet committed (from the bytes on disk: no rows are kept in memory)."""
        with self._lock:
            return self.counts.accepted - self.counts.written - self.counts.dead_lettered

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "accepted": self.counts.accepted,
                "written": self.counts.written,
                "dead_lettered": self.counts.dead_lettered,
                "pending": self.pending_unlocked(),
                "spooled_bytes": self._spooled_bytes,
                "failed_commits": self.counts.failed_commits,
                "adopted_segments": self.counts.adopted_segments,
                "last_error": self.counts.last_error,
            }

    def pending_unlocked(self) -> int:
        return self.counts.accepted - self.counts.written - self.counts.dead_lettered

    def _rotate(self) -> None:
        with self._lock:
            if self._rows_in_segment:
                self._segment.close()
                self._open_segment()

    def flush(self) -> int:
        """Commit every closed segment (and the current one); returns rows written. Storage errors
        leave the segments in place for the next attempt."""
        self._rotate()
        with self._commit_lock:
            written = 0
            for number, path in _segments(self.directory):
                if number == self._number:
                    continue  # the open segment
                size = path.stat().st_size
                try:
                    rows, dead = commit_segment(self.table, self.schema, self.owner, number, path)
                except Exception as exc:  # noqa: BLE001 - storage outages: keep the segment, retry later
                    with self._lock:
                        self.counts.failed_commits += 1
                        self.counts.last_error = f"{type(exc).__name__}: {exc}"[:500]
                    log.warning("commit of %s to %s failed, will retry: %s", path.name, self.uri, exc)
                    break
                with self._lock:
                    self.counts.written += rows
                    self.counts.dead_lettered += dead
                    self._spooled_bytes -= size
                written += rows
            self.adopt()
            return written

    def adopt(self) -> int:
        """Commit the segments of spools whose owner has died (its lock is free); returns rows written."""
        written = 0
        for other in self.root.iterdir() if self.root.exists() else []:
            if other == self.directory or not other.is_dir() or other.name.startswith("."):
                continue
            with contextlib.ExitStack() as held:
                lock = held.enter_context((other / LOCK_FILE).open("a"))
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # alive
                try:
                    for number, path in _segments(other):
                        rows, dead = commit_segment(self.table, self.schema, other.name, number, path)
                        written += rows
                        with self._lock:
                            self.counts.written += rows
                            self.counts.dead_lettered += dead
                            self.counts.adopted_segments += 1
                except Exception as exc:  # noqa: BLE001 - storage outages: the next pass adopts the rest
                    log.warning("adopting %s for %s failed, will retry: %s", other.name, self.uri, exc)
                    continue
                (other / LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    other.rmdir()
        return written

    def _run(self) -> None:
        failures = 0
        while not self._closed.is_set():
            self._wake.wait(min(self.flush_interval_s * (2**failures), 60))
            self._wake.clear()
            before = self.counts.failed_commits
            self.flush()
            failures = min(failures + 1, 6) if self.counts.failed_commits > before else 0

    def close(self, timeout_s: float = 20) -> None:
        """Commit everything (a draining replica), then release the spool."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline:
            self.flush()
            if self.pending():
                time.sleep(0.5)
        with self._lock:
            self._segment.close()
        if not _segments(self.directory) or all(p.stat().st_size == 0 for _, p in _segments(self.directory)):
            for _, path in _segments(self.directory):
                path.unlink()
            (self.directory / LOCK_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        self._lock_file.close()
