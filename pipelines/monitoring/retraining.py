"""Retraining as the monitor runs it: submit through the Ray Jobs API, follow each attempt to its
outcome (promoted, refused by the gate, failed), retry with backoff, keep learning while the drift's
regime gathers labelled rows, and mark the champion degraded when the attempts run out. Every attempt
is an event in the retraining_attempts Delta table, with what triggered it."""

from __future__ import annotations

import shlex
import time
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.jobs import Jobs
from pipelines.adapters.prediction_log import RECEIVED_AT
from pipelines.adapters.registry import TRIGGER_TAG, Registry
from pipelines.core import drift_policy, retraining_policy
from pipelines.core.config import CONFIG_YAML_ENV, LakeloopConfig, dump_config
from pipelines.core.loop_outcomes import JobOutcome, RetrainingStep
from pipelines.core.service_retries import with_retries
from pipelines.monitoring.champion import ChampionInfo

ATTEMPT_SCHEMA = pa.schema(
    [
        pa.field("champion_name", pa.string(), nullable=False),
        pa.field("champion_version", pa.string(), nullable=False),
        pa.field("attempt", pa.int32(), nullable=False),  # 0: an event about the champion (degraded, recovered)
        pa.field("submission_id", pa.string()),
        # submitted | candidate | promoted | refused | failed; about the champion: degraded | recovered |
        # online_promoted | online_retired (a candidate set by hand, decided by the online gate)
        pa.field("event", pa.string(), nullable=False),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("tune", pa.bool_()),
        pa.field("training_rows", pa.int64()),
        pa.field("regime_start", pa.timestamp("us", tz="UTC")),
        pa.field("candidate_version", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("trigger", pa.string()),  # drift | retry | learn (core/retraining_policy)
    ]
)


def jobs(config: LakeloopConfig) -> Jobs:
    return Jobs(config.ray.dashboard, config.monitor.retries, config.ray.request_timeout_s)


def submit_retraining(
    config: LakeloopConfig, champion: ChampionInfo, plan: retraining_policy.RetrainingPlan, regime_start: str | None
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
    entrypoint = f"{config.monitor.retrain_entrypoint} --trigger-id {shlex.quote(submission)} --trigger {plan.trigger}"
    entrypoint += f" --regime-start {regime_start}" if regime_start else ""
    entrypoint += " --tune" if plan.tune else ""
    metadata = {
        "lakeloop.trigger": plan.trigger,
        "lakeloop.champion_version": champion.version,
        "lakeloop.attempt": str(plan.attempt),
    }
    return submission, jobs(config).submit(entrypoint, submission, env, metadata)


def attempt_events(config: LakeloopConfig, champion: ChampionInfo) -> list[dict]:
    table = delta.tables(config).attempts.read(
        filter=(pc.field("champion_name") == champion.name) & (pc.field("champion_version") == champion.version)
    )
    return [] if table is None else table.to_pylist()


def record_events(config: LakeloopConfig, events: list[dict]) -> None:
    if events:  # merge: tables written before the trigger column existed take it
        delta.tables(config).attempts.append(pa.Table.from_pylist(events, schema=ATTEMPT_SCHEMA), merge_schema=True)


def attempt_event(champion: ChampionInfo, event: str, attempt: int = 0, **fields) -> dict:
    """A row of the attempts table: an event of attempt `attempt` (0: about the champion)."""
    return {
        "champion_name": champion.name,
        "champion_version": champion.version,
        "attempt": attempt,
        "event": event,
        "at": datetime.now(UTC),
        **fields,
    }


def job_outcome(config: LakeloopConfig, submission_id: str) -> tuple[str, str, str | None] | None:
    """(promoted | candidate | refused | failed, reason, candidate version) of a finished attempt; None
    while it runs."""
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
    gate = version.tags.get("lakeloop.gate")
    outcome = {"promoted": retraining_policy.PROMOTED, retraining_policy.CANDIDATE: retraining_policy.CANDIDATE}.get(
        gate or "", retraining_policy.REFUSED
    )
    return outcome, version.tags.get("lakeloop.gate_reason", ""), str(version.version)


def reconcile(config: LakeloopConfig, champion: ChampionInfo, events: list[dict]) -> list[dict]:
    """Outcome events for attempts whose job has finished since the last pass."""
    found = []
    for attempt in retraining_policy.fold_attempts(events):
        if (
            attempt.outcome == retraining_policy.SUBMITTED
            and (outcome := job_outcome(config, attempt.submission_id)) is not None
        ):
            kind, reason, candidate = outcome
            found.append(outcome_event(champion, attempt, kind, reason, candidate))
    return found


def outcome_event(
    champion: ChampionInfo, attempt: retraining_policy.Attempt, kind: str, reason: str, candidate: str | None
) -> dict:
    """The event that ends (or moves on) an attempt: its outcome, reason and candidate version."""
    return attempt_event(
        champion,
        kind,
        attempt.number,
        submission_id=attempt.submission_id,
        tune=attempt.tune,
        training_rows=attempt.training_rows,
        candidate_version=candidate,
        reason=reason[:4000],
        trigger=attempt.trigger,
    )


def training_rows(config: LakeloopConfig) -> int:
    """Rows in what train.source reads: the events table and/or labels received through /feedback."""
    tables = delta.tables(config)
    sources = {
        "events": [tables.events],
        "feedback": [tables.feedback],
        "both": [tables.events, tables.feedback],
    }[config.train.source]
    return sum(table.count() for table in sources)


def regime_rows(config: LakeloopConfig, since: str) -> int:
    """Labelled rows of a regime in what train.source reads: events since `since`, and labels received
    since then through /feedback."""
    tables, moment = delta.tables(config), datetime.fromisoformat(since)
    sources = {
        "events": [(tables.events, config.dataset.event_time)],
        "feedback": [(tables.feedback, RECEIVED_AT)],
        "both": [(tables.events, config.dataset.event_time), (tables.feedback, RECEIVED_AT)],
    }[config.train.source]
    return sum(_rows_since(table, column, moment) for table, column in sources)


def _rows_since(table: delta.Table, column: str, moment: datetime) -> int:
    data = table.read([column])
    if data is None or data.num_rows == 0:
        return 0
    times = data.column(0)
    bound = pa.scalar(moment if times.type.tz else moment.replace(tzinfo=None), times.type)
    return int(pc.sum(pc.greater_equal(times, bound)).as_py() or 0)


def plan(
    config: LakeloopConfig, champion: ChampionInfo, regime_start: datetime | None, events: list[dict]
) -> tuple[retraining_policy.RetrainingPlan, int]:
    """What the policy says now (and the training rows it was decided on), reading only."""
    rows = training_rows(config)
    learning = config.monitor.learning
    regime = champion.regime
    grown = regime_rows(config, regime.start) if learning.enabled and regime.start and regime_start is None else 0
    decided = retraining_policy.plan_retraining(
        retraining_policy.fold_attempts(events), regime_start is not None, rows, config.monitor.retry,
        regime, grown, learning,
    )  # fmt: skip
    return decided, rows


def retraining_step(
    config: LakeloopConfig, champion: ChampionInfo, regime_start: datetime | None, submit: bool
) -> RetrainingStep:
    """Reconcile finished attempts, then submit, wait, or report the loop degraded."""
    events = attempt_events(config, champion)
    new = reconcile(config, champion, events) if submit else []
    events += new
    plan_now, rows = plan(config, champion, regime_start, events)
    submission, submitted = None, False
    # a learning attempt trains on the champion's regime; a drift attempt on the one the trigger saw begin
    start = champion.regime.start if plan_now.trigger == retraining_policy.LEARN else _iso(regime_start)
    if plan_now.action == "submit" and submit:
        submission, submitted = submit_retraining(config, champion, plan_now, start)
        new.append(
            attempt_event(
                champion,
                retraining_policy.SUBMITTED,
                plan_now.attempt,
                submission_id=submission,
                tune=plan_now.tune,
                training_rows=regime_rows(config, start) if plan_now.trigger == retraining_policy.LEARN else rows,
                regime_start=datetime.fromisoformat(start) if start else None,
                reason=plan_now.reason,
                trigger=plan_now.trigger,
            )
        )
    degraded, _ = retraining_policy.health(events)
    if plan_now.action == "degraded" and not degraded:
        new.append(attempt_event(champion, retraining_policy.DEGRADED, reason=plan_now.reason))
    elif degraded and plan_now.action == "none":
        new.append(
            attempt_event(
                champion, retraining_policy.RECOVERED, reason=plan_now.reason or "recent windows no longer drift"
            )
        )
    record_events(config, new)
    if any(e["event"] in (retraining_policy.DEGRADED, retraining_policy.RECOVERED) for e in new):
        reason = plan_now.reason if plan_now.action == "degraded" else None
        with_retries(
            "marking the champion's health in MLflow",
            config.monitor.retries,
            lambda: Registry.from_config(config).set_health(champion.version, reason),
        )
    attempts = retraining_policy.fold_attempts(events + new)
    if submission is None and attempts and attempts[-1].outcome == retraining_policy.SUBMITTED:
        submission = attempts[-1].submission_id
    state = (
        "degraded" if plan_now.action == "degraded" else "retraining" if plan_now.action in ("submit", "wait") else "ok"
    )
    return RetrainingStep(
        state=state,
        action=plan_now.action,
        reason=plan_now.reason,
        submission_id=submission,
        submitted=submitted,
        training_rows=rows,
        regime_start=start,
        attempts=attempts,
    )


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def follow(config: LakeloopConfig, submission_id: str, timeout_s: float = 900) -> JobOutcome:
    """Wait for a retraining job to end; its status, gate outcome, reason, version and wall time."""
    started = time.perf_counter()
    state = jobs(config).wait(submission_id, timeout_s)
    outcome, reason, version = job_outcome(config, submission_id) or ("running", "", None)
    return JobOutcome(
        submission_id,
        state.status,
        outcome,
        reason,
        version,
        round(time.perf_counter() - started, 1),
        _stages(config, version),
    )


def _stages(config: LakeloopConfig, version: str | None) -> dict[str, float]:
    """The training run's seconds per stage (prepare, fit, evaluate, gate), as it logged them."""
    if version is None:
        return {}
    metrics = Registry.from_config(config).version_run(version).data.metrics
    return {k.removeprefix("seconds_"): v for k, v in metrics.items() if k.startswith("seconds_")}
