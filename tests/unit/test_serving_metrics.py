"""The endpoint's metrics: the dashboard shipped in cluster/monitoring asks only for metrics the app
exports, and the log's counters grow by what the spool's counts grew."""

from __future__ import annotations

import json
import re

import numpy as np

from pipelines.core.model_output import Scored
from serve.metrics import ServingMetrics
from tests.helpers import ROOT

DASHBOARD = ROOT / "cluster" / "monitoring" / "grafana-lakeloop.json"


def exported(recorder: ServingMetrics) -> set[str]:
    """Prometheus names as Ray exports them: a `ray_` prefix; histograms as _bucket, _sum and _count."""
    names = set()
    for metric in vars(recorder).values():
        name = getattr(metric, "_name", None)
        if name:
            suffixes = ("_bucket", "_sum", "_count") if type(metric).__name__ == "Histogram" else ("",)
            names |= {f"ray_{name}{suffix}" for suffix in suffixes}
    return names


def test_the_dashboard_asks_only_for_exported_metrics() -> None:
    queries = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    asked = {name for q in queries for name in re.findall(r"ray_lakeloop_\w+", q)}
    assert asked and asked <= exported(ServingMetrics("m", classification=True))


class Recorded:
    def __init__(self) -> None:
        self.calls: list[tuple[float, dict]] = []

    def inc(self, value: float = 1.0, tags: dict | None = None) -> None:
        self.calls.append((value, tags or {}))

    set = inc
    observe = inc


def test_log_counters_grow_by_what_the_spool_counted() -> None:
    recorder = ServingMetrics("m", classification=True)
    recorder.failed_commits, recorder.backlog = Recorded(), Recorded()
    recorder.lost, recorder.broken = Recorded(), Recorded()
    snapshot = {
        "pending": 7,
        "failed_commits": 2,
        "dead_lettered": 0,
        "lost": 0,
        "broken": False,
        "flushing": True,
    }
    recorder.log_state("predictions", snapshot)
    recorder.log_state("predictions", {**snapshot, "pending": 0})  # no new failure: nothing added
    recorder.log_state("predictions", {**snapshot, "failed_commits": 5, "lost": 3, "broken": True})
    recorder.log_state("predictions", {**snapshot, "flushing": False})
    assert [v for v, _ in recorder.failed_commits.calls] == [2, 3]
    assert [v for v, _ in recorder.backlog.calls] == [7, 0, 7, 7]
    assert [v for v, _ in recorder.lost.calls] == [3]
    assert [v for v, _ in recorder.broken.calls] == [0, 0, 1, 1]  # broken, then no flush thread


def test_predictions_are_counted_by_class_and_regression_by_one_series() -> None:
    recorder = ServingMetrics("m", classification=True)
    recorder.predicted, recorder.score = Recorded(), Recorded()
    recorder.predictions(
        Scored(
            {
                "prediction": np.array([1, 0, 1]),
                "probability_0": np.array([0.2, 0.9, 0.4]),
                "probability_1": np.array([0.8, 0.1, 0.6]),
            }
        )
    )
    assert sorted((tags["class"], v) for v, tags in recorder.predicted.calls) == [("0", 1), ("1", 2)]
    assert [v for v, _ in recorder.score.calls] == [0.8, 0.1, 0.6]  # the last class's probability
    regression = ServingMetrics("m", classification=False)
    regression.predicted = Recorded()
    regression.predictions(Scored({"prediction": np.array([3.5, 1.25])}))
    assert [(tags["class"], v) for v, tags in regression.predicted.calls] == [("value", 2)]


def test_unknown_categories_are_counted_from_what_the_model_reported() -> None:
    recorder = ServingMetrics("m", classification=True)
    recorder.unknown = Recorded()
    recorder.unknown_categories(Scored({"prediction": np.array([1, 0])}))  # another model's: nothing counted
    recorder.unknown_categories(Scored({"prediction": np.array([1, 0])}, {"plan": 2}))
    assert recorder.unknown.calls == [(2, {"model": "m", "feature": "plan"})]


def test_a_swap_is_counted_after_the_first_model_and_the_version_is_set_again() -> None:
    recorder = ServingMetrics("m", classification=True)
    recorder.swaps, recorder.version = Recorded(), Recorded()
    recorder.model_loaded("1")
    recorder.model_loaded("2")
    recorder.report_version()
    assert len(recorder.swaps.calls) == 1
    assert [v for v, _ in recorder.version.calls] == [1, 2, 2]
