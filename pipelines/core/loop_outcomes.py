"""What the loop's passes return: a monitor pass, its retraining step, and a followed retraining job.
Typed, so the CLI's summary, the demo, the Prometheus metrics and the tests read named fields; `--json`
prints `asdict` of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from pipelines.core.retraining_policy import Attempt


@dataclass(frozen=True)
class WindowSummary:
    """One checked window of a kind (served traffic, or labelled rows): its span, rows and verdict."""

    start: str
    end: str
    rows: int
    drift: bool | None  # None: no decision (too few rows)


@dataclass(frozen=True)
class RetrainingStep:
    """What the monitor did about retraining for the champion in this pass, and why."""

    state: Literal["ok", "retraining", "degraded"]
    action: Literal["none", "wait", "submit", "degraded"]
    reason: str
    submission_id: str | None  # the attempt submitted now, or the one still running
    submitted: bool  # newly submitted by this pass
    training_rows: int
    regime_start: str | None  # ISO time the drift began, when this pass saw one
    attempts: list[Attempt] = field(default_factory=list)


@dataclass(frozen=True)
class OnlineStep:
    """What the online gate did in this pass about the candidate (promote, retire or wait) or the guard
    (rollback, keep or wait), and the paired evidence it decided on (the metric of each on the same
    labelled rows, one-sided p-values: p_better small when the candidate or guard is the better)."""

    candidate_version: str
    champion_version: str
    mode: str  # shadow | canary, or guard: the replaced champion in shadow after a promotion
    action: Literal["promote", "retire", "wait", "rollback", "keep"]
    reason: str
    metric: str
    pairs: int
    champion: float | None
    candidate: float | None
    p_better: float | None
    p_worse: float | None
    looks: int  # looks spent so far (of gate.online.looks)
    error_rows: int  # rows the candidate failed to score live
    p_not_worse: float | None = None  # the champion below its floor: small when not worse by the margin
    applied: bool = False  # this pass did it (False for a wait, or when a rival monitor acted first)


@dataclass(frozen=True)
class MonitorPass:
    model_version: str  # the champion checked against
    windows: list[WindowSummary]  # traffic windows checked in this pass
    performance_windows: list[WindowSummary]  # labelled windows checked in this pass
    pending_rows: int  # served rows waiting for a full window
    pending_labels: int
    orphaned_labels: int  # labels whose served row never landed
    concurrent_monitor: bool  # another monitor committed this pass's windows first
    triggered: bool  # the debounce called for retraining
    retraining: RetrainingStep
    seconds: dict[str, float]  # detect, submit
    reports: list[dict] = field(default_factory=list)  # the drift_reports rows this pass wrote
    online: OnlineStep | None = None  # the online gate's step, while a candidate is set

    @property
    def submission_id(self) -> str | None:
        return self.retraining.submission_id

    @property
    def submitted(self) -> bool:
        return self.retraining.submitted

    def to_dict(self) -> dict:
        """`--json`'s document: every field, and the submission at the top level, as scripts read it."""
        return {**asdict(self), "submission_id": self.submission_id, "submitted": self.submitted}


@dataclass(frozen=True)
class JobOutcome:
    """A retraining job followed to its end."""

    submission_id: str
    status: str  # the Jobs API's: SUCCEEDED, FAILED, STOPPED, or still RUNNING at the timeout
    outcome: str  # promoted | refused | failed | running
    reason: str
    version: str | None  # the model version it registered
    seconds: float  # from submission to its end, as followed
    stages: dict[str, float] = field(default_factory=dict)  # the training run's seconds per stage
