"""Shadow scoring off the request path: while an online candidate is set, the model that did not
answer a request scores its rows on this replica's shadow thread, and the rows go to the
`shadow_predictions` log.

The request path only queues the work (ShadowScorer.submit). The thread waits GATHER_S after the
first queued batch and scores everything queued by then in one predict call per model and one spool
write: scored as a task per batch on the event loop, shadow mode cost a replica 24% of its req/s at
32 concurrent requests and added 0.6 ms to the p50 at 1 (docs/benchmarks.md). At most `max_waiting`
batches wait; past that a batch is dropped and counted, never delaying an answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from pipelines.adapters.log_spool import LogSpool, SpoolRefused
from pipelines.adapters.prediction_log import shadow_row
from pipelines.adapters.registry import ModelRef, Predictor
from pipelines.core.model_output import Scored
from serve.metrics import ServingMetrics

log = logging.getLogger("lakeloop.serve")
GATHER_S = 0.02  # how long the thread lets batches gather after the first one


@dataclass(frozen=True)
class ShadowWork:
    """One request to score in shadow: the model (its ref and predictor), its role in the log, the
    request's id and feature columns, and `error` when the model already failed it (a canary request
    the candidate could not answer): then the row is logged with that error and scored no more."""

    ref: ModelRef
    predictor: Predictor
    role: str
    request_id: str
    columns: Mapping[str, np.ndarray]
    error: str | None = None

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values())))


class ShadowScorer:
    def __init__(self, spool: LogSpool, metrics: ServingMetrics, max_waiting: int) -> None:
        self.spool, self.metrics = spool, metrics
        self._queue: queue.Queue[list[ShadowWork]] = queue.Queue(maxsize=max_waiting)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shadow-scoring", daemon=True)

    def start(self) -> ShadowScorer:
        self._thread.start()
        return self

    def submit(self, work: list[ShadowWork]) -> bool:
        """Queue a batch's shadow work; False (and the rows counted as dropped) when the queue is full."""
        if not work:
            return True
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            self.metrics.dropped_shadow_rows(sum(w.rows for w in work))
            return False
        return True

    def join(self) -> None:
        """Block until everything submitted so far is scored and spooled."""
        self._queue.join()

    def stop(self) -> None:
        """Score what is queued, then end the thread (before the spool closes)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._drain()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._stop.wait(GATHER_S)
            self._score([first, *self._take_queued()])

    def _take_queued(self) -> list[list[ShadowWork]]:
        taken = []
        while True:
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                return taken

    def _drain(self) -> None:
        batches = self._take_queued()
        if batches:
            self._score(batches)

    def _score(self, batches: list[list[ShadowWork]]) -> None:
        try:
            work = [item for batch in batches for item in batch]
            rows: list[dict] = []
            for role in dict.fromkeys(w.role for w in work):
                rows += self._role_rows([w for w in work if w.role == role])
            if rows:
                self.spool.add(rows)
        except SpoolRefused:  # the served log refuses requests in this state; shadow rows are only evidence
            self.metrics.dropped_shadow_rows(sum(w.rows for w in work))
        except Exception:
            log.exception("shadow scoring failed for %d requests", len(work))
        finally:
            for _ in batches:
                self._queue.task_done()

    def _role_rows(self, work: list[ShadowWork]) -> list[dict]:
        """The log rows of one model's shadow work: one predict call for every request not already
        failed; if it raises, each request alone, so one bad request costs only its own rows."""
        todo = [w for w in work if w.error is None]
        outputs: list[Scored | str] = _outputs(todo) if todo else []
        found = dict(zip((id(w) for w in todo), outputs, strict=True))
        rows: list[dict] = []
        failed = 0
        for item in work:
            output = found.get(id(item), item.error)
            failed += isinstance(output, str)
            rows += shadow_rows(item, output)  # type: ignore[arg-type]
        if failed:
            self.metrics.candidate_failed(failed)
        self.metrics.scored_rows(work[0].role, "shadow", len(rows))  # one counter call per role and pass
        return rows


def _outputs(work: list[ShadowWork]) -> list[Scored | str]:
    predictor = work[0].predictor
    try:
        output = predictor.predict_columns({n: np.concatenate([w.columns[n] for w in work]) for n in work[0].columns})
    except Exception:  # noqa: BLE001 - isolate the request that caused it, below
        return [_alone(w) for w in work]
    bounds = np.cumsum([0, *(w.rows for w in work)]).tolist()
    return [output.slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]


def _alone(work: ShadowWork) -> Scored | str:
    try:
        return work.predictor.predict_columns(work.columns)
    except Exception as exc:  # noqa: BLE001 - logged as the rows' error
        return f"{type(exc).__name__}: {exc}"


def shadow_rows(work: ShadowWork, output: Scored | str) -> list[dict]:
    """A request's rows as its model scored them in shadow, or each with the reason it could not."""
    at = datetime.now(UTC)
    outputs = [output] * work.rows if isinstance(output, str) else output.rows()
    ref = work.ref
    return [shadow_row(work.request_id, i, ref.name, ref.version, at, row, work.role) for i, row in enumerate(outputs)]
