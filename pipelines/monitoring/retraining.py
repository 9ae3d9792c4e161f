"""Retraining as the monitor runs it: submit through the Ray Jobs API, follow each attempt to its
outcome (promoted, refused by the gate, failed), retry with backoff, and mark the champion degraded
when the attempts run out. Every attempt is an event in the retraining_attempts Delta table."""

from __future__ import annotations

import shlex
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.jobs import Jobs
from pipelines.adapters.registry import TRIGGER_TAG, Registry
from pipelines.core import drift_policy, retraining_policy
from pipelines.core.config import CONFIG_YAML_ENV, LakeloopConfig, dump_config
from pipelines.core.loop_outcomes import JobOutcome, RetrainingStep
from pipelines.core.service_retries import with_retries
from pipelines.monitoring.champion import Champion

ATTEMPT_SCHEMA = pa.schema(
    [
        pa.field("champion_name", pa.string(), nullable=False),
        pa.field("champion_version", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),  # 0: an event about the champion (degraded, recovered)
        pa.field("submission_id", pa.string()),
        pa.field(
            "event", pa.string(), nullable=False
        ),  # submitted | promoted | refused | failed | degraded | recovered
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tune", pa.bool_()),
        pa.field("training_rows", pa.int64()),
        pa.field("regime_start", pa.timestamp("us", tz="UTC")),
        pa.field("candidate_version", pa.string()),
        pa.field("reason", pa.string()),
    ]
)


def jobs(config: LakeloopConfig) -> Jobs:
    return Jobs(config.ray.dashboard, config.monitor.retries, config.ray.request_timeout_s)


def submit_retraining(
    config: LakeloopConfig, champion: Champion, plan: retraining_policy.RetrainingPlan, regime_start: datetime | None
) -> tuple[str, bool]:
    """Submit the planned attempt; returns (id, newly submitted). The id is deterministic per
    (champion version, attempt), so a second monitor's submission is refused by the Jobs API."""
    submission = drift_policy.submission_id(champion.name, champion.version, plan.attempt)
    # The job trains with exactly the monitor's configuration: a child job inherits no environment,
    # and on a cluster it may run on a node that cannot see the monitor's files.
    env = {
        "LAKELOOP_STORAGE_ROOT": config.storage.root,
        "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri,
        CONFIG_YAML_ENV: dump_config(config),
    }
    entrypoint = f"{config.monitor.retrain_entrypoint} --trigger-id {shlex.quote(submission)}"
    entrypoint += f" --regime-start {regime_start.isoformat()}" if regime_start else ""
    entrypoint += " --tune" if plan.tune else ""
    metadata = {
        "lakeloop.trigger": "drift",
        "lakeloop.champion_version": champion.version,
        "lakeloop.attempt": str(plan.attempt),
    }
    return submission, jobs(config).submit(entrypoint, submission, env, metadata)


def attempt_events(config: LakeloopConfig, champion: Champion) -> list[dict]:
    table = delta.tables(config).attempts.read(
        filter=(pc.field("champion_name") == champion.name) & (pc.field("champion_version") == champion.version)
    )
    return [] if table is None else table.to_pylist()


def record_events(config: LakeloopConfig, events: list[dict]) -> None:
    if events:
        delta.tables(config).attempts.append(pa.Table.from_pylist(events, schema=ATTEMPT_SCHEMA))


def _event(champion: Champion, event: str, attempt: int = 0, **fields) -> dict:
    return {
        "champion_name": champion.name,
        "champion_version": champion.version,
        "attempt": attempt,
        "event": event,
        "at": datetime.now(UTC),
        **fields,
    }


def job_outcome(config: LakeloopConfig, submission_id: str) -> tuple[str, str, str | None] | None:
    """(promoted | refused | failed, reason, candidate version) of a finished attempt; None while it runs."""
    state = jobs(config).state(submission_id)
    if state is None:
        return retraining_policy.FAILED, "the Jobs API does not know this job (was the cluster restarted?)", None
    if not state.finished:
        return None
    if state.status != "SUCCEEDED":
        return retraining_policy.FAILED, f"job {state.status}: {state.message[-300:]}", None
    registry = Registry.from_config(config)
    found = with_retries(
        "reading the retrained model from MLflow",
        config.monitor.retries,
        lambda: registry.versions_tagged(TRIGGER_TAG, submission_id),
    )
    if not found:
        return retraining_policy.FAILED, "the job succeeded but registered no model version", None
    version = found[0]
    outcome = (
        retraining_policy.PROMOTED if version.tags.get("lakeloop.gate") == "promoted" else retraining_policy.REFUSED
    )
    return outcome, version.tags.get("lakeloop.gate_reason", ""), str(version.version)


def reconcile(config: LakeloopConfig, champion: Champion, events: list[dict]) -> list[dict]:
    """Outcome events for attempts whose job has finished since the last pass."""
    found = []
    for attempt in retraining_policy.fold_attempts(events):
        if (
            attempt.outcome == retraining_policy.SUBMITTED
            and (outcome := job_outcome(config, attempt.submission_id)) is not None
        ):
            kind, reason, candidate = outcome
            found.append(
                _event(
                    champion,
                    kind,
                    attempt.number,
                    submission_id=attempt.submission_id,
                    tune=attempt.tune,
                    training_rows=attempt.training_rows,
                    candidate_version=candidate,
                    reason=reason,
                )
            )
    return found


def training_rows(config: LakeloopConfig) -> int:
    """Rows in what train.source reads: the events table and/or labels received through /feedback."""
    tables = delta.tables(config)
    sources = {
        "events": [tables.events],
        "feedback": [tables.feedback],
        "both": [tables.events, tables.feedback],
    }[config.train.source]
    return sum(table.count() for table in sources)


def retraining_step(
    config: LakeloopConfig, champion: Champion, regime_start: datetime | None, submit: bool
) -> RetrainingStep:
    """Reconcile finished attempts, then submit, wait, or report the loop degraded."""
    events = attempt_events(config, champion)
    new = reconcile(config, champion, events) if submit else []
    events += new
    rows = training_rows(config)
    plan = retraining_policy.plan_retraining(
        retraining_policy.fold_attempts(events), regime_start is not None, rows, config.monitor.retry
    )
    submission, submitted = None, False
    if plan.action == "submit" and submit:
        submission, submitted = submit_retraining(config, champion, plan, regime_start)
        new.append(
            _event(
                champion,
                retraining_policy.SUBMITTED,
                plan.attempt,
                submission_id=submission,
                tune=plan.tune,
                training_rows=rows,
                regime_start=regime_start,
                reason=plan.reason,
            )
        )
    degraded, _ = retraining_policy.health(events)
    if plan.action == "degraded" and not degraded:
        new.append(_event(champion, retraining_policy.DEGRADED, reason=plan.reason))
    elif degraded and plan.action == "none":
        new.append(
            _event(champion, retraining_policy.RECOVERED, reason=plan.reason or "recent windows no longer drift")
        )
    record_events(config, new)
    if any(e["event"] in (retraining_policy.DEGRADED, retraining_policy.RECOVERED) for e in new):
        reason = plan.reason if plan.action == "degraded" else None
        with_retries(
            "marking the champion's health in MLflow",
            config.monitor.retries,
            lambda: Registry.from_config(config).set_health(champion.version, reason),
        )
    attempts = retraining_policy.fold_attempts(events + new)
    if submission is None and attempts and attempts[-1].outcome == retraining_policy.SUBMITTED:
        submission = attempts[-1].submission_id
    state = "degraded" if plan.action == "degraded" else "retraining" if plan.action in ("submit", "wait") else "ok"
    return RetrainingStep(
        state=state,
        action=plan.action,
        reason=plan.reason,
        submission_id=submission,
        submitted=submitted,
        training_rows=rows,
        regime_start=regime_start.isoformat() if regime_start else None,
        attempts=attempts,
    )


def follow(config: LakeloopConfig, submission_id: str, timeout_s: float = 900) -> JobOutcome:
    """Wait for a retraining job to end; its status, gate outcome, reason, version and wall time."""
    started = time.perf_counter()
    state = jobs(config).wait(submission_id, timeout_s)
    outcome, reason, version = job_outcome(config, submission_id) or ("running", "", None)
    return JobOutcome(submission_id, state.status, outcome, reason, version, round(time.perf_counter() - started, 1))
