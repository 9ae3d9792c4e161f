"""The looping monitor's Prometheus endpoint (`monitor.metrics_port` on `monitor.metrics_host`,
loopback by default): what it checked and when, and what it did about it.

    lakeloop_monitor_last_pass_timestamp_seconds    gauge: end of the last pass, by outcome (ok | error)
    lakeloop_monitor_windows_total                  counter: checked windows, by kind and verdict
    lakeloop_monitor_pending_rows                   gauge: served rows waiting for a full window
    lakeloop_monitor_champion_version               gauge: the version checked against
    lakeloop_monitor_retraining_submissions_total   counter: retraining jobs this monitor submitted
    lakeloop_monitor_degraded                       gauge: 1 while the champion is marked degraded
    lakeloop_monitor_online_decisions_total         counter: what the online gate did, by action (promote,
                                                    retire, rollback, keep)

`lakeloop monitor --once` (cron) exits before anyone could scrape it and exports nothing; its
verdicts are in the drift_reports table and the MLflow timeline.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from pipelines.core.drift_policy import verdict
from pipelines.core.loop_outcomes import MonitorPass


class MonitorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.last_pass = Gauge(
            "lakeloop_monitor_last_pass_timestamp_seconds", "end of the last pass", ["outcome"], registry=self.registry
        )
        self.windows = Counter(
            "lakeloop_monitor_windows", "checked windows", ["kind", "verdict"], registry=self.registry
        )
        self.pending = Gauge("lakeloop_monitor_pending_rows", "rows waiting for a full window", registry=self.registry)
        self.version = Gauge("lakeloop_monitor_champion_version", "version checked against", registry=self.registry)
        self.submissions = Counter(
            "lakeloop_monitor_retraining_submissions", "retraining jobs submitted", registry=self.registry
        )
        self.degraded = Gauge("lakeloop_monitor_degraded", "1 while the champion is degraded", registry=self.registry)
        self.online = Counter(
            "lakeloop_monitor_online_decisions", "online gate decisions applied", ["action"], registry=self.registry
        )

    def serve(self, host: str, port: int) -> None:
        """Start the HTTP endpoint (a daemon thread)."""
        start_http_server(port, addr=host, registry=self.registry)

    def passed(self, outcome: MonitorPass) -> None:
        """A pass's outcome (pipelines.monitoring.check.run_once)."""
        for kind, windows in (("traffic", outcome.windows), ("performance", outcome.performance_windows)):
            for window in windows:
                self.windows.labels(kind, verdict(window.drift).replace(" ", "_")).inc()
        self.pending.set(outcome.pending_rows)
        if str(outcome.model_version).isdigit():
            self.version.set(int(outcome.model_version))
        if outcome.submitted:
            self.submissions.inc()
        self.degraded.set(1 if outcome.retraining.state == "degraded" else 0)
        if outcome.online is not None and outcome.online.applied:
            self.online.labels(outcome.online.action).inc()
        self.last_pass.labels("ok").set(time.time())

    def failed(self) -> None:
        self.last_pass.labels("error").set(time.time())
