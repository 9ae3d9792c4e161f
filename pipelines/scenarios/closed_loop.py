"""The loop run as production runs it, round by round: a labelled stream through the endpoint, a
monitor pass, and when the monitor submits retraining, the job through the Ray Jobs API and the
endpoint's swap. The demo's concept-drift phase, the recovery benchmark and the loop tests drive it.

A round stands for one monitor interval; a submitted job is waited for before the next round, as if
retraining finished within one interval (the measured job time is reported beside it). With the
online gate on, a job's candidate goes to live traffic instead, and the endpoint swaps in the round
whose monitor pass promotes it (or rolls a promotion back).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pandas as pd

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.core.loop_outcomes import JobOutcome, MonitorPass
from pipelines.monitoring.check import run_once
from pipelines.monitoring.retraining import follow
from pipelines.scenarios.traffic import LabelledStream, ServedRow, Traffic, wait_for_version, wait_logged


@dataclass
class Round:
    served: list[ServedRow]
    check: MonitorPass  # the monitor pass after this round's rows landed
    job: JobOutcome | None = None
    swapped: bool = False
    notes: list[str] = field(default_factory=list)


class ClosedLoop:
    def __init__(
        self,
        config: LakeloopConfig,
        url: str,
        stream: LabelledStream,
        job_timeout_s: float = 900,
        during_jobs: Traffic | None = None,
    ) -> None:
        """`during_jobs`: unlabelled traffic kept flowing while a retraining job runs and Serve swaps."""
        self.config, self.url, self.stream, self.job_timeout_s = config, url, stream, job_timeout_s
        self.during_jobs = during_jobs
        self.labelled = 0

    def rounds(self, frames: Iterable[pd.DataFrame]) -> Iterator[Round]:
        for frame in frames:
            yield self.round(frame)

    def round(self, frame: pd.DataFrame) -> Round:
        served = self.stream.send(frame)
        self.labelled += len(served)
        if not wait_logged(self.config, self.labelled, self.labelled, timeout_s=60):
            raise LakeloopError("served rows or labels did not reach the Delta logs within 60 s")
        check = run_once(self.config)
        result = Round(served, check)
        online = check.online
        if online is not None and online.applied and online.action in ("promote", "rollback"):
            result.swapped = self._swapped(online.candidate_version)
        if check.submitted:
            clients = self.during_jobs.start() if self.during_jobs else []
            try:
                result.job = follow(self.config, check.submission_id, self.job_timeout_s)
                result.swapped = result.job.outcome == "promoted" and self._swapped(result.job.version)
            finally:
                if self.during_jobs:
                    self.during_jobs.stop(clients)
        return result

    def _swapped(self, version: str | None) -> bool:
        wait_s = 3 * self.config.serving.poll_interval_s + 60
        return version is not None and wait_for_version(self.url, version, wait_s, self.stream.headers)
