"""Clients of the Serve endpoint that the demo, the recovery benchmark and the loop tests drive:
steady unlabelled traffic, and a labelled stream that scores rows and then sends their true labels
to /feedback (test-then-train: every label arrives after its prediction was served)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pandas as pd

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig

ROWS_PER_REQUEST = 5


def records(frame: pd.DataFrame, features: list[str]) -> list[dict]:
    """JSON-ready feature records: missing values as null."""
    part = frame[features]
    return part.astype(object).where(part.notna(), None).to_dict(orient="records")


class Traffic:
    """Concurrent clients posting small batches to /invocations, counting statuses."""

    def __init__(self, url: str, rows: list[dict], clients: int = 8, headers: dict | None = None) -> None:
        self.url, self.rows, self.clients, self.headers = url, rows, clients, headers or {}
        self.statuses: Counter = Counter()
        self.served_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._budget: int | None = None

    def _client(self, offset: int) -> None:
        with httpx.Client(timeout=60, headers=self.headers) as http:
            i = offset
            while not self._stop.is_set():
                with self._lock:
                    if self._budget is not None:
                        if self._budget == 0:
                            return
                        self._budget -= 1
                start = (i * ROWS_PER_REQUEST) % (len(self.rows) - ROWS_PER_REQUEST)
                batch = self.rows[start : start + ROWS_PER_REQUEST]
                try:
                    code = http.post(f"{self.url}/invocations", json={"dataframe_records": batch}).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with self._lock:
                    self.statuses[code] += 1
                    self.served_rows += ROWS_PER_REQUEST if code == 200 else 0
                i += self.clients

    def send(self, requests: int) -> Counter:
        """Send this many requests, spread over the clients; returns the status counts so far."""
        self._budget = requests
        threads = [threading.Thread(target=self._client, args=(k,)) for k in range(self.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.statuses

    def start(self) -> list[threading.Thread]:
        """Keep sending from half the clients until stop()."""
        self._budget = None
        threads = [
            threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(max(self.clients // 2, 1))
        ]
        for thread in threads:
            thread.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for thread in threads:
            thread.join()
        self._stop.clear()

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)


@dataclass(frozen=True)
class ServedRow:
    position: int  # index in the stream
    request_id: str
    row: int
    version: str  # the model version that answered
    prediction: object
    label: object


class LabelledStream:
    """Scores rows through POST /predict, then posts each row's label to POST /feedback."""

    def __init__(
        self, url: str, features: list[str], label: str, clients: int = 4, headers: dict | None = None
    ) -> None:
        self.url, self.features, self.label, self.clients = url, features, label, clients
        self.headers = headers or {}
        self.position = 0
        self.failed = 0

    def _request(self, http: httpx.Client, start: int, chunk: pd.DataFrame) -> list[ServedRow]:
        response = http.post(f"{self.url}/predict", json={"records": records(chunk, self.features)})
        if response.status_code != 200:
            self.failed += 1
            return []
        answer = response.json()
        served = [
            ServedRow(start + i, answer["request_id"], i, answer["model"]["version"], p["prediction"], label)
            for i, (p, label) in enumerate(zip(answer["predictions"], chunk[self.label].tolist(), strict=True))
        ]
        for row in served:
            sent = http.post(
                f"{self.url}/feedback", json={"request_id": row.request_id, "row": row.row, "label": _plain(row.label)}
            )
            self.failed += sent.status_code != 202
        return served

    def send(self, frame: pd.DataFrame) -> list[ServedRow]:
        """Score every row of `frame` (features and label), send the labels; in stream order."""
        starts = range(0, len(frame), ROWS_PER_REQUEST)
        with httpx.Client(timeout=60, headers=self.headers) as http, ThreadPoolExecutor(self.clients) as pool:
            parts = pool.map(
                lambda s: self._request(http, self.position + s, frame.iloc[s : s + ROWS_PER_REQUEST]), starts
            )
            served = [row for part in parts for row in part]
        self.position += len(frame)
        return served


def _plain(value: object) -> object:
    return value.item() if hasattr(value, "item") else value


def wait_logged(config: LakeloopConfig, predictions: int, feedback: int = 0, timeout_s: float = 60) -> bool:
    """True once the Delta logs hold at least this many served rows and labels (replicas append
    every flush interval); False at the timeout."""
    tables = delta.tables(config)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if tables.predictions.count() >= predictions and tables.feedback.count() >= feedback:
            return True
        time.sleep(0.5)
    return False


def wait_for_version(url: str, version: str, timeout_s: float, headers: dict | None = None) -> bool:
    """True once GET /model answers with this version."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/model", headers=headers or {}, timeout=5).json().get("version") == version:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return False
