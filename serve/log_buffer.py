"""Buffered appends to Delta off the response path: one commit per N rows or T seconds.

A failed append keeps its rows in the buffer for the next attempt; `close()` flushes what is
left, so a replica that drains or shuts down loses nothing it served.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import pyarrow as pa

from pipelines.adapters import delta

log = logging.getLogger("lakeloop.serve")


class DeltaAppender:
    def __init__(
        self,
        uri: str,
        schema: pa.Schema,
        flush_rows: int,
        flush_interval_s: float,
        storage_options: Mapping[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.schema = schema
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.storage_options = dict(storage_options or {})
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.written = 0
        self.accepted = 0  # rows ever handed to this log
        self._thread = threading.Thread(target=self._run, name=f"delta-appender-{uri}", daemon=True)
        self._thread.start()

    def add(self, rows: list[dict]) -> None:
        with self._lock:
            self._rows.extend(rows)
            self.accepted += len(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            self._wake.set()

    def counts(self) -> dict[str, int]:
        return {"accepted": self.accepted, "written": self.written, "pending": self.pending()}

    def pending(self) -> int:
        with self._lock:
            return len(self._rows)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            try:
                delta.append(self.uri, pa.Table.from_pylist(rows, schema=self.schema), self.storage_options)
            except Exception as exc:  # noqa: BLE001 - keep the rows and retry on the next flush
                log.warning("append of %d rows to %s failed, will retry: %s", len(rows), self.uri, exc)
                with self._lock:
                    self._rows[:0] = rows
                return 0
            self.written += len(rows)
            return len(rows)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.flush()
