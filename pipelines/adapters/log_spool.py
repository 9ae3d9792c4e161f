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
`max_spool_bytes` (counting every owner's segments of the table on this node: a replica restarted
during an outage finds its predecessor's) or when the disk is full, the log refuses new rows
(`SpoolFull`: the endpoint answers 503 with Retry-After) instead of losing any. A write is taken
whole or not at all: a short or failed write is cut back to where it began, so no torn row is left
to swallow the next one. When the spool cannot write at all (its directory is gone, the disk fails)
it refuses rows too (`SpoolBroken`, also a 503) and reports itself `broken` until a write succeeds;
the flush thread survives any error and records it.

The spool's directories are private (0700) and a replica adopts only directories and segments its
own user owns; adopted rows are checked (`check`, the endpoint's own validation) and those that fail
go to the dead-letter table. A row that can never be written (a value its column cannot hold, a type the
table does not have) goes to the table's dead-letter table with the reason, and never blocks the
others; columns the table lacks are added (schema evolution), so a changed feature set keeps logging.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
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


class SpoolRefused(LakeloopError):
    """The spool cannot take rows now (the endpoint answers 503 with Retry-After)."""


class SpoolFull(SpoolRefused):
    """The spool holds `max_spool_bytes` of rows that storage has not accepted yet, or its disk is full."""


class SpoolBroken(SpoolRefused):
    """The spool cannot write at all (its directory or disk failed)."""


FULL_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
Check = Callable[[dict], str | None]  # a row -> why it is not acceptable, or None


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
    written: int = 0  # of them, committed
    dead_lettered: int = 0  # of them, sent to the dead-letter table
    adopted_segments: int = 0  # segments of dead owners this process committed ...
    adopted_rows: int = 0  # ... their rows written ...
    adopted_dead_lettered: int = 0  # ... and dead-lettered
    lost: int = 0  # accepted rows whose segment was removed under the spool before its commit
    failed_commits: int = 0
    last_error: str | None = None
    extra: dict = field(default_factory=dict)


def commit_segment(
    target: delta.Table, schema: pa.Schema, owner: str, number: int, path: Path, check: Check | None = None
) -> tuple[int, int]:
    """Commit one segment exactly once; returns (rows written, rows dead-lettered). Raises on a
    storage error (the segment stays for the next attempt). With `check`, rows it refuses are
    dead-lettered with its reason."""
    app_id = f"lakeloop-log:{owner}"
    rows, refused = read_segment(path), []
    if check is not None:
        verdicts = [(row, check(row)) for row in rows]
        rows, refused = [r for r, why in verdicts if why is None], [(r, why) for r, why in verdicts if why]
    table, bad = to_table(rows, schema)
    bad = refused + bad
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


def _owned(path: Path) -> bool:
    """Whether this process's user owns `path` (another local user must not plant rows or labels)."""
    try:
        return path.stat().st_uid == os.getuid()
    except OSError:
        return False


def _private_directory(path: Path) -> Path:
    """`path` as a directory only this user can enter; one another user owns is refused."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not _owned(path):
        raise SpoolBroken(f"{path}: the spool directory belongs to another user; refusing to use it")
    path.chmod(0o700)
    return path


def _bytes(directory: Path) -> int:
    total = 0
    for _, path in _segments(directory):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


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
        check: Check | None = None,
    ) -> None:
        self.table, self.schema, self.flush_rows, self.flush_interval_s = table, schema, flush_rows, flush_interval_s
        self.uri, self.max_spool_bytes, self.check = table.uri, max_spool_bytes, check
        self.owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        _private_directory(spool_dir)
        self.root = _private_directory(spool_dir / delta.table_key(table.uri))
        self.directory = self.root / self.owner
        self._lock_file = self._claim_directory()
        self.counts = Counts()
        self._lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._number, self._rows_in_segment, self._segment, self._segment_bytes = 0, 0, None, 0
        self._spooled_bytes = _bytes(self.directory)
        self._others_bytes = self._bytes_of_others()
        self.broken: str | None = None  # why the spool cannot write, while it cannot
        self._open_segment()
        self._wake, self._closed = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"log-spool-{self.root.name}", daemon=True)
        self._thread.start()

    def _claim_directory(self):
        """Lock this owner's spool directory for as long as the process lives. A new directory is
        created and locked under a hidden name, then renamed: an adopter never sees it unlocked."""
        if self.directory.exists():  # this owner's earlier spool (same id): take it over
            staging = _private_directory(self.directory)
        else:
            staging = _private_directory(self.root / f".{self.owner}")
        lock_file = (staging / LOCK_FILE).open("w")
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if staging != self.directory:
            staging.rename(self.directory)
        return lock_file

    def _open_segment(self) -> None:
        """Start the next segment; the current one stays open unless the new one opened."""
        number = self._number + 1
        segment = (self.directory / f"seg-{number:012d}{SEGMENT_SUFFIX}").open("ab", buffering=0)
        if self._segment is not None:
            self._segment.close()
        self._number, self._segment, self._rows_in_segment, self._segment_bytes = number, segment, 0, 0

    def _removed(self) -> bool:
        """Whether the open segment (or the whole spool directory) was removed; its rows count as lost."""
        if os.fstat(self._segment.fileno()).st_nlink:
            return False
        gone = self.pending_unlocked() if not self.directory.exists() else self._rows_in_segment
        self.counts.lost += gone
        self._spooled_bytes = _bytes(self.directory) if self.directory.exists() else 0
        self._rows_in_segment = 0
        log.error("%d spooled rows for %s were removed before their commit", gone, self.uri)
        return True

    def _bytes_of_others(self) -> int:
        """Segments of other owners of this table on this node (dead ones wait here for adoption)."""
        others = (d for d in self.root.iterdir() if d.is_dir() and d != self.directory) if self.root.exists() else ()
        return sum(_bytes(d) for d in others)

    def add(self, rows: list[dict]) -> None:
        """Write rows to the spool (they survive this process being killed), or raise SpoolFull (the
        bound or the disk) or SpoolBroken (the spool cannot write); a refused write leaves no trace."""
        data = b"".join(json.dumps({k: _encode(v) for k, v in row.items()}).encode() + b"\n" for row in rows)
        with self._lock:
            waiting = self._spooled_bytes + self._others_bytes
            if waiting + len(data) > self.max_spool_bytes:
                raise SpoolFull(f"{self.uri}: {waiting} bytes wait for storage on this node; try again later")
            self._write(data)
            self._spooled_bytes += len(data)
            self._rows_in_segment += len(rows)
            self.counts.accepted += len(rows)
            full = self._rows_in_segment >= self.flush_rows
        if full:
            self._wake.set()

    def _write(self, data: bytes) -> None:
        """All of `data` into the segment (unbuffered: in the kernel before the response is sent), or
        none of it: a short or failed write is cut back to where it began."""
        try:
            if self._segment is None or self._segment.closed or self._removed():
                self._open_segment()  # first, after a failure, or the segment was removed under us
            start, view = self._segment_bytes, memoryview(data)
            try:
                while view:
                    view = view[self._segment.write(view) or 0 :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(self._segment.fileno(), start)
                raise
        except OSError as exc:
            if exc.errno in FULL_ERRORS:
                raise SpoolFull(f"{self.uri}: the spool's disk is full ({exc.strerror}); try again later") from None
            self.broken = self.counts.last_error = f"{type(exc).__name__}: {exc}"[:500]
            raise SpoolBroken(f"{self.uri}: the spool cannot write ({exc.strerror}); try again later") from None
        self._segment_bytes = start + len(data)
        self.broken = None

    def pending(self) -> int:
        """Rows spooled and not yet committed (from the bytes on disk: no rows are kept in memory)."""
        with self._lock:
            return self.pending_unlocked()

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "accepted": self.counts.accepted,
                "written": self.counts.written,
                "dead_lettered": self.counts.dead_lettered,
                "pending": self.pending_unlocked(),
                "spooled_bytes": self._spooled_bytes,
                "others_bytes": self._others_bytes,
                "failed_commits": self.counts.failed_commits,
                "lost": self.counts.lost,
                "adopted_segments": self.counts.adopted_segments,
                "adopted_rows": self.counts.adopted_rows,
                "adopted_dead_lettered": self.counts.adopted_dead_lettered,
                "last_error": self.counts.last_error,
                "broken": self.broken,
                "flushing": self._thread.is_alive(),
            }

    def pending_unlocked(self) -> int:
        return self.counts.accepted - self.counts.written - self.counts.dead_lettered - self.counts.lost

    def _rotate(self) -> None:
        with self._lock:
            if self._segment is not None and not self._segment.closed and self._removed() or self._rows_in_segment:
                self._open_segment()

    def flush(self) -> int:
        """Commit every closed segment (and the current one); returns rows written. No error escapes:
        storage errors leave the segments in place for the next attempt, and any error is recorded
        (`last_error`; `broken` when the spool itself failed)."""
        try:
            return self._flush()
        except OSError as exc:
            with self._lock:
                self.broken = self.counts.last_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("the spool of %s failed: %s", self.uri, exc)
            return 0

    def _flush(self) -> int:
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
            with self._lock:
                self._others_bytes = self._bytes_of_others()
            return written

    def adopt(self) -> int:
        """Commit the segments of spools whose owner has died (its lock is free) and that this user
        owns; their rows are checked first (`check`). Returns rows written."""
        written = 0
        for other in self.root.iterdir() if self.root.exists() else []:
            if other == self.directory or not other.is_dir() or other.name.startswith("."):
                continue
            if not _owned(other):
                log.warning("not adopting %s: another user owns it", other)
                continue
            with contextlib.ExitStack() as held:
                lock = held.enter_context((other / LOCK_FILE).open("a"))
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # alive
                try:
                    for number, path in _segments(other):
                        if not _owned(path):
                            log.warning("not adopting %s: another user owns it", path)
                            continue
                        rows, dead = commit_segment(self.table, self.schema, other.name, number, path, self.check)
                        written += rows
                        with self._lock:
                            self.counts.adopted_rows += rows
                            self.counts.adopted_dead_lettered += dead
                            self.counts.adopted_segments += 1
                except Exception as exc:  # noqa: BLE001 - storage outages: the next pass adopts the rest
                    log.warning("adopting %s for %s failed, will retry: %s", other.name, self.uri, exc)
                    continue
                (other / LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    other.rmdir()
        return written

    def _run(self) -> None:
        """Commit every flush interval (backing off while storage fails), until closed; an error in a
        pass is recorded and the next pass runs (a dead flush thread would stop every commit)."""
        failures = 0
        while not self._closed.is_set():
            self._wake.wait(min(self.flush_interval_s * (2**failures), 60))
            self._wake.clear()
            before = self.counts.failed_commits
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - recorded; the thread must survive
                self.counts.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.warning("a flush of %s failed: %s", self.uri, exc)
            failures = min(failures + 1, 6) if self.counts.failed_commits > before or self.broken else 0

    def close(self, timeout_s: float = 20) -> None:
        """Commit everything (a draining replica), then release the spool."""
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline and not self.broken:
            self.flush()
            if self.pending():
                time.sleep(0.5)
        with self._lock:
            if self._segment is not None:
                self._segment.close()
        with contextlib.suppress(OSError):
            if not _segments(self.directory) or all(p.stat().st_size == 0 for _, p in _segments(self.directory)):
                for _, path in _segments(self.directory):
                    path.unlink()
                (self.directory / LOCK_FILE).unlink(missing_ok=True)
                self.directory.rmdir()
        self._lock_file.close()
