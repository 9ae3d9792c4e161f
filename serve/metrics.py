"""The endpoint's Prometheus metrics, exported through Ray's metrics agent (`ray.serve.metrics`, so
each carries the application, deployment and replica tags; Ray prefixes every name with `ray_`).

    lakeloop_model_version            gauge: the registered version this replica serves
    lakeloop_model_swaps_total        counter: models swapped in after the first
    lakeloop_predictions_total        counter: predicted rows, by class (regression: class "value") ...
    lakeloop_prediction_score         histogram: ... and the score (last class's probability, or the value)
    lakeloop_unknown_categories_total counter: categorical values outside the model's training vocabulary, by feature
    lakeloop_refused_requests_total   counter: answers >= 400, by status and route
    lakeloop_log_backlog_rows         gauge: rows spooled and not yet committed, by table
    lakeloop_log_failed_commits_total counter: commits to Delta that failed (and will be retried), by table
    lakeloop_log_dead_letters_total   counter: rows sent to the dead-letter table, by table
    lakeloop_log_lost_rows_total      counter: spooled rows removed (from under the spool) before their commit
    lakeloop_log_broken               gauge: 1 while the log cannot write or its flush thread is gone (unready)
    lakeloop_model_rows_total         counter: while an online candidate is set, rows scored by role
                                      (champion | candidate | guard) and how (served | shadow)
    lakeloop_candidate_errors_total   counter: requests the online candidate failed (the client still gets an answer)
    lakeloop_shadow_dropped_rows_total counter: rows not scored in shadow (the replica's shadow queue was full)
    lakeloop_feature_lookups_total    counter: rows looked up in the online store, by view and result
                                      (hit | miss: entity not in the store | unavailable: no online version)
    lakeloop_feature_age_seconds      histogram: per request and view, the oldest looked-up value's age (its
                                      feature time to the lookup)

Gauges (the version, the log's backlog) and the feature lookups' counts and ages are reported by a thread
every `every_s`, never on the request path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ray.serve import metrics

from pipelines.core.model_output import PREDICTION_COLUMN, PROBABILITY_PREFIX, Scored

SCORE_BOUNDARIES = [round(0.1 * i, 1) for i in range(1, 10)]  # probabilities; values fall in the outer buckets
AGE_BOUNDARIES = [60.0, 600.0, 3600.0, 6 * 3600.0, 86400.0, 7 * 86400.0, 30 * 86400.0]  # a minute to a month


class ServingMetrics:
    def __init__(self, model_name: str, classification: bool) -> None:
        self.model_name, self.classification = model_name, classification
        self.version = metrics.Gauge(
            "lakeloop_model_version", "registered model version this replica serves", tag_keys=("model",)
        )
        self.swaps = metrics.Counter("lakeloop_model_swaps_total", "models swapped in after the first", ("model",))
        self.predicted = metrics.Counter("lakeloop_predictions_total", "predicted rows by class", ("model", "class"))
        self.score = metrics.Histogram(
            "lakeloop_prediction_score", "last class's probability, or the value", SCORE_BOUNDARIES, ("model",)
        )
        self.unknown = metrics.Counter(
            "lakeloop_unknown_categories_total", "values outside the training vocabulary", ("model", "feature")
        )
        self.refused = metrics.Counter(
            "lakeloop_refused_requests_total", "answers with status >= 400, by status and route", ("status", "route")
        )
        self.backlog = metrics.Gauge("lakeloop_log_backlog_rows", "rows spooled, not yet in Delta", ("table",))
        self.failed_commits = metrics.Counter(
            "lakeloop_log_failed_commits_total", "failed commits to Delta (retried)", ("table",)
        )
        self.dead_letters = metrics.Counter(
            "lakeloop_log_dead_letters_total", "rows sent to the dead-letter table", ("table",)
        )
        self.lost = metrics.Counter(
            "lakeloop_log_lost_rows_total", "spooled rows removed before their commit", ("table",)
        )
        self.broken = metrics.Gauge("lakeloop_log_broken", "1 while the log cannot write or flush", ("table",))
        self.role_rows = metrics.Counter(
            "lakeloop_model_rows_total", "rows scored by role and how (served or shadow)", ("model", "role", "how")
        )
        self.candidate_errors = metrics.Counter(
            "lakeloop_candidate_errors_total", "requests the online candidate failed to score", ("model",)
        )
        self.shadow_dropped = metrics.Counter(
            "lakeloop_shadow_dropped_rows_total", "rows not scored in shadow (queue full)", ("model",)
        )
        self.lookups = metrics.Counter(
            "lakeloop_feature_lookups_total", "rows looked up in the online store", ("view", "result")
        )
        self.ages = metrics.Histogram(
            "lakeloop_feature_age_seconds", "per request, the oldest looked-up value's age", AGE_BOUNDARIES, ("view",)
        )
        self.looked_up: dict[tuple[str, str], int] = {}  # what this replica counted, for GET /model
        self._lookups_reported: dict[tuple[str, str], int] = {}
        self._ages: list[tuple[str, float]] = []
        self._version: str | None = None
        self._seen: dict[tuple[str, str], int] = {}

    def model_loaded(self, version: str) -> None:
        if self._version is not None:
            self.swaps.inc(1, {"model": self.model_name})
        self._version = version
        self.report_version()

    def report_version(self) -> None:
        """Set again by the reporter thread: set only at load, the gauge was missing from a scrape about
        90 s later in a test run here."""
        if self._version is not None and self._version.isdigit():
            self.version.set(int(self._version), {"model": self.model_name})

    def predictions(self, output: Scored) -> None:
        tags = {"model": self.model_name}
        if PREDICTION_COLUMN not in output.columns:
            return
        predicted = output.columns[PREDICTION_COLUMN].tolist()  # from a list: Series.value_counts costs ~0.2 ms a call
        counts: dict[str, int] = {"value": len(predicted)}  # regression: one series (values are unbounded)
        if self.classification:
            counts = {}
            for label in predicted:
                counts[str(label)] = counts.get(str(label), 0) + 1
        for label, count in counts.items():
            self.predicted.inc(count, {**tags, "class": label})
        probabilities = [c for c in output.columns if c.startswith(PROBABILITY_PREFIX)]
        scores = output.columns[probabilities[-1]].tolist() if probabilities else predicted
        for value in scores:
            self.score.observe(float(value), tags)

    def scored_rows(self, role: str, how: str, rows: int) -> None:
        self.role_rows.inc(rows, {"model": self.model_name, "role": role, "how": how})

    def candidate_failed(self, requests: int) -> None:
        self.candidate_errors.inc(requests, {"model": self.model_name})

    def dropped_shadow_rows(self, rows: int) -> None:
        self.shadow_dropped.inc(rows, {"model": self.model_name})

    def feature_lookups(self, view: str, result: str, rows: int) -> None:
        """Counted here; reported by the reporter thread (report_lookups): Ray's inc and observe cost
        ~4 us each, a third of a 1-row lookup's time when made on the request path."""
        if rows:
            self.looked_up[(view, result)] = self.looked_up.get((view, result), 0) + rows

    def feature_age(self, view: str, age_s: float) -> None:
        self._ages.append((view, age_s))

    def report_lookups(self) -> None:
        """The lookups counted and the ages seen since the last call, to Ray's metrics."""
        for (view, result), rows in list(self.looked_up.items()):
            grown = rows - self._lookups_reported.get((view, result), 0)
            if grown > 0:
                self.lookups.inc(grown, {"view": view, "result": result})
                self._lookups_reported[(view, result)] = rows
        ages, self._ages = self._ages, []  # one reference swap: a request appending meanwhile lands in either
        for view, age in ages:
            self.ages.observe(age, {"view": view})

    def unknown_categories(self, output: Scored) -> None:
        """What the model counted while encoding (lakeloop models count; other pyfuncs do not)."""
        for feature, count in output.unknown.items():
            self.unknown.inc(count, {"model": self.model_name, "feature": feature})

    def refusal(self, status: int, route: str) -> None:
        self.refused.inc(1, {"status": str(status), "route": route})

    def log_state(self, table: str, snapshot: dict) -> None:
        """A spool's snapshot: the backlog, and the counters' growth since the last call."""
        tags = {"table": table}
        self.backlog.set(snapshot["pending"], tags)
        self.broken.set(1 if snapshot["broken"] or not snapshot["flushing"] else 0, tags)
        for counter, key in (
            (self.failed_commits, "failed_commits"),
            (self.dead_letters, "dead_lettered"),
            (self.lost, "lost"),
        ):
            grown = snapshot[key] - self._seen.get((table, key), 0)
            if grown > 0:
                counter.inc(grown, tags)
            self._seen[(table, key)] = snapshot[key]


class Reporter:
    """Calls `report` every `every_s` on a daemon thread until stopped."""

    def __init__(self, report: Callable[[], None], every_s: float) -> None:
        self._report, self._every_s, self._stop = report, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-reporter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self._report()

    def stop(self) -> None:
        self._stop.set()
