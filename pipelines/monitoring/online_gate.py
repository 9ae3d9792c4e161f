"""The online gate's second stage, one step of a monitor pass: while a candidate is set
(gate.online.alias), pair the labelled rows both models scored (the served log and the shadow log,
by request id and row), test the candidate against the champion on gate.metric, and promote it
through the registry's compare-and-set (when it is better, or when the champion is below its floor
and the candidate is not worse by gate.online.failing_champion_margin), retire it, or wait for more
pairs.

Only labels received since the candidate was nominated count, and a look is spent only when the
pairs grew past `min_pairs` since the last one (core/paired_evidence spends alpha over the looks). A
candidate that failed to score `max_error_rows` rows live is retired whatever its evidence. Each
decision goes to the candidate's version tags and, for the retraining attempt that produced it, to
the retraining_attempts table (promoted or refused).

Automatic rollback: a promotion (online, or offline with the gate on) leaves the replaced champion
as the alias in shadow, the guard. The same paired test then asks whether the guard is better than
the new champion live; if so the champion is rolled back through the registry's rollback path
(event `rolled_back`), and after `rollback_pairs` pairs without that the guard ends (`guard_ended`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import (
    ERROR,
    KEY,
    LABEL,
    MODEL_VERSION,
    OUTPUT,
    RECEIVED_AT,
    REQUEST_ID,
    SERVED_AT,
)
from pipelines.adapters.registry import (
    GUARD,
    ONLINE_EVIDENCE_TAG,
    ONLINE_LOOKS_TAG,
    ONLINE_MODE_TAG,
    ONLINE_REASON_TAG,
    ONLINE_SINCE_TAG,
    ONLINE_TAG,
    PREVIOUS,
    ChampionState,
    Registry,
)
from pipelines.core import metrics, retraining_policy
from pipelines.core.config import LakeloopConfig
from pipelines.core.gate import threshold_failures
from pipelines.core.loop_outcomes import OnlineStep
from pipelines.core.model_output import PREDICTION_COLUMN
from pipelines.core.paired_evidence import PairedEvidence, mcnemar, next_look, not_worse_by, paired_bootstrap
from pipelines.core.service_retries import with_retries
from pipelines.monitoring.champion import ChampionInfo
from pipelines.monitoring.retraining import attempt_event, attempt_events, outcome_event, record_events
from pipelines.training.fitted_model import probability_columns
from pipelines.training.labelled_feedback import label_problem, standing_labels

log = logging.getLogger(__name__)


def labelled_pairs(config: LakeloopConfig, champion: str, candidate: str, since: datetime) -> pd.DataFrame:
    """The labelled rows both versions scored, one per (request id, row): the label and each version's
    output (JSON), from labels received since `since`."""
    columns = [*KEY, LABEL, "champion_output", "candidate_output"]
    tables = delta.tables(config)
    feedback = tables.feedback.read(filter=pc.field(RECEIVED_AT) >= pa.scalar(since, pa.timestamp("us", tz="UTC")))
    if feedback is None or feedback.num_rows == 0:
        return pd.DataFrame(columns=columns)
    labels = standing_labels(feedback).to_pandas()
    labels = labels[[label_problem(config.dataset, value) is None for value in labels[LABEL]]]
    if labels.empty:
        return pd.DataFrame(columns=columns)
    wanted = pc.field(REQUEST_ID).isin(pa.array(labels[REQUEST_ID].unique())) & pc.field(MODEL_VERSION).isin(
        [champion, candidate]
    )
    outputs = [tables.predictions.read([*KEY, MODEL_VERSION, OUTPUT], wanted)]
    if tables.shadow.exists():
        shadow = tables.shadow.read([*KEY, MODEL_VERSION, OUTPUT], wanted & pc.field(ERROR).is_null())
        outputs.append(shadow)
    found = [t.to_pandas() for t in outputs if t is not None and t.num_rows]
    if not found:
        return pd.DataFrame(columns=columns)
    scored = pd.concat(found).dropna(subset=[OUTPUT]).drop_duplicates([*KEY, MODEL_VERSION])
    by = {v: scored[scored[MODEL_VERSION] == v].drop(columns=[MODEL_VERSION]) for v in (champion, candidate)}
    pairs = labels[[*KEY, LABEL]].merge(by[champion], on=KEY).merge(by[candidate], on=KEY, suffixes=("_a", "_b"))
    pairs = pairs.rename(columns={f"{OUTPUT}_a": "champion_output", f"{OUTPUT}_b": "candidate_output"})
    return pairs[columns].reset_index(drop=True)


def evidence(config: LakeloopConfig, pairs: pd.DataFrame, seed: int = 0, guard: bool = False) -> PairedEvidence:
    """gate.metric of both models on the paired rows, with McNemar's exact test for accuracy and a
    paired bootstrap for every other metric; when the champion is below its floor there (and this is
    not a guard's look), with the non-inferiority p-value at gate.online.failing_champion_margin."""
    dataset, metric, online = config.dataset, config.gate.metric, config.gate.online
    champion, candidate = (_outputs(pairs[c]) for c in ("champion_output", "candidate_output"))
    rounds = online.bootstrap_rounds
    if metric == "accuracy":
        truth = pairs[LABEL].astype(str).to_numpy()
        right = [frame[PREDICTION_COLUMN].astype(str).to_numpy() == truth for frame in (champion, candidate)]
        found = mcnemar(*right)
        margin = None if guard else _failing_margin(config, found.champion)
        return found if margin is None else not_worse_by(found, margin, *right, rounds, seed)
    if dataset.task == "classification":
        targets = dataset.encode_labels(pairs[LABEL])
        columns = probability_columns(dataset)
        outputs = [frame[columns].to_numpy(float) for frame in (champion, candidate)]
        score: Callable[[np.ndarray, np.ndarray], float] = lambda t, p: metrics.classification_metric(metric, t, p)
    else:
        targets = pairs[LABEL].astype(float).to_numpy()
        outputs = [frame[PREDICTION_COLUMN].to_numpy(float) for frame in (champion, candidate)]
        score = lambda t, p: metrics.regression(t, p)[metric]
    # the champion's metric on the rows decides the margin before the one bootstrap (not a second run)
    margin = None if guard else _failing_margin(config, float(score(targets, outputs[0])))
    return paired_bootstrap(metric, score, targets, outputs[0], outputs[1], rounds, seed, margin)


def _failing_margin(config: LakeloopConfig, champion: float) -> float | None:
    """The non-inferiority margin, when the champion's live metric fails gate.metric's floor."""
    gate = config.gate
    floor = {gate.metric: gate.thresholds[gate.metric]} if gate.metric in gate.thresholds else {}
    failing = floor and threshold_failures({gate.metric: champion}, floor)
    return gate.online.failing_champion_margin if failing and gate.online.failing_champion_margin > 0 else None


def _outputs(column: pd.Series) -> pd.DataFrame:
    return pd.DataFrame.from_records([json.loads(text) for text in column])


def error_rows(config: LakeloopConfig, candidate: str, since: datetime) -> tuple[int, str]:
    """Rows the candidate failed to score live since `since`, and the first reason."""
    shadow = delta.tables(config).shadow
    if not shadow.exists():
        return 0, ""
    failed = shadow.read(
        [ERROR],
        (pc.field(MODEL_VERSION) == candidate)
        & pc.field(ERROR).is_valid()
        & (pc.field(SERVED_AT) >= pa.scalar(since, pa.timestamp("us", tz="UTC"))),
    )
    if failed is None or failed.num_rows == 0:
        return 0, ""
    return failed.num_rows, str(failed.column(ERROR)[0].as_py())


def _unscored_rows(config: LakeloopConfig, version: str, after: datetime) -> int:
    """Rows served after `after` while the candidate was scored on none: 0 as soon as it scored one."""
    tables = delta.tables(config)
    since = pc.field(SERVED_AT) >= pa.scalar(after, pa.timestamp("us", tz="UTC"))
    if tables.shadow.exists():
        scored = tables.shadow.read([MODEL_VERSION], since & (pc.field(MODEL_VERSION) == version))
        if scored is not None and scored.num_rows:
            return 0
    served = tables.predictions.read([MODEL_VERSION], since)
    if served is None or pc.any(pc.equal(served.column(MODEL_VERSION), version)).as_py():
        return 0
    return served.num_rows


def online_step(config: LakeloopConfig, champion: ChampionInfo) -> OnlineStep | None:
    """One look at the candidate (or the guard), if one is set; applies the decision it reaches."""
    online = config.gate.online
    registry = Registry.from_config(config)
    candidate = with_retries(
        "reading the online candidate", config.monitor.retries, lambda: registry.version_by_alias(online.alias)
    )
    _close_stale_attempts(config, champion, None if candidate is None else str(candidate.version))
    if candidate is None or str(candidate.version) == champion.version:
        return None
    tags = candidate.tags
    since = datetime.fromtimestamp(float(tags.get(ONLINE_SINCE_TAG) or candidate.creation_timestamp / 1000), UTC)
    mode = GUARD if tags.get(ONLINE_TAG) == GUARD else tags.get(ONLINE_MODE_TAG) or "shadow"
    step = _decide(config, champion, str(candidate.version), mode, since, tags)
    return replace(step, applied=_apply(config, registry, champion, step))


# A candidate's verdicts are the actions; for a guard (the replaced champion, in shadow) "the candidate
# is better" means the new champion is worse live: roll back; "worse" or no gain means keep it.
GUARD_ACTIONS = {"promote": "rollback", "retire": "keep", "wait": "wait"}


def _decide(
    config: LakeloopConfig, champion: ChampionInfo, version: str, mode: str, since: datetime, tags: dict
) -> OnlineStep:
    online, guard = config.gate.online, mode == GUARD
    errors, first_error = error_rows(config, version, since)
    pairs = labelled_pairs(config, champion.version, version, since)
    found = evidence(config, pairs, guard=guard) if len(pairs) else None
    last = json.loads(tags.get(ONLINE_EVIDENCE_TAG) or "null") or {}
    looks = int(tags.get(ONLINE_LOOKS_TAG) or 0)
    unscored = found is None and _unscored_rows(config, version, since + timedelta(seconds=online.load_timeout_s))
    if errors >= online.max_error_rows:
        action, reason = "retire", f"failed to score {errors} live rows (gate.online.max_error_rows): {first_error}"
    elif unscored >= online.min_pairs:
        action, reason = (
            "retire",
            (
                f"no replica scored it on {unscored} rows served more than {online.load_timeout_s:g} s after it was "
                "nominated (gate.online.load_timeout_s): it does not load or warm up (GET /model: candidate.last_error)"
            ),
        )
    else:
        most = max(online.rollback_pairs, online.min_pairs) if guard else online.max_pairs
        decided, looks = next_look(found, online, looks, int(last.get("pairs") or 0), most)
        action, reason = decided.action, decided.reason
    if guard:
        action = GUARD_ACTIONS[action]
        reason = f"guard of the promotion of version {champion.version}: {reason}"
    return OnlineStep(
        candidate_version=version,
        champion_version=champion.version,
        mode=mode,
        action=action,  # type: ignore[arg-type]
        reason=f"online gate ({mode}): {reason}",
        metric=found.metric if found else config.gate.metric,
        pairs=found.pairs if found else 0,
        champion=_finite(found.champion) if found else None,
        candidate=_finite(found.candidate) if found else None,
        p_better=found.p_better if found else None,
        p_worse=found.p_worse if found else None,
        looks=looks,
        error_rows=errors,
        p_not_worse=found.p_not_worse if found else None,
    )


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _apply(config: LakeloopConfig, registry: Registry, champion: ChampionInfo, step: OnlineStep) -> bool:
    """Tag the evidence, then act: promote or roll back through the compare-and-set (a rival monitor
    that acted first, or any move of the champion since this pass began, makes it a no-op), retire the
    candidate or end the guard; record what was done. Returns whether this pass acted."""
    evidence_tag = json.dumps({k: v for k, v in vars(step).items() if k != "reason"})
    registry.tag_version(step.candidate_version, {ONLINE_LOOKS_TAG: str(step.looks), ONLINE_EVIDENCE_TAG: evidence_tag})
    if step.action == "wait":
        return False
    alias = config.gate.online.alias
    if step.action in ("promote", "rollback"):
        compared = registry.state()
        if compared.version != champion.version:
            log.info("online gate: the champion moved to %s during the pass; nothing done", compared.version)
            return False
        refused = (
            _promote(config, registry, compared, step)
            if step.action == "promote"
            else _roll_back(registry, alias, step)
        )
        if refused:
            log.info("online gate: %s", refused)
            return False
    else:
        registry.retire(alias, step.candidate_version, step.reason, "kept" if step.action == "keep" else "retired")
    if step.mode == GUARD:
        kind = "rolled_back" if step.action == "rollback" else "guard_ended"
        record_events(
            config, [attempt_event(champion, kind, candidate_version=step.candidate_version, reason=step.reason)]
        )
    else:
        outcome = retraining_policy.PROMOTED if step.action == "promote" else retraining_policy.REFUSED
        _record_outcome(config, champion, step.candidate_version, outcome, step.reason)
    log.warning("online gate: %s version %s: %s", step.action, step.candidate_version, step.reason)
    return True


def _promote(config: LakeloopConfig, registry: Registry, compared: ChampionState, step: OnlineStep) -> str | None:
    """The candidate becomes the champion; the replaced one stays in shadow as the guard (unless
    gate.online.rollback_pairs is 0)."""
    refused = registry.replace_champion(step.candidate_version, compared)
    if refused:
        return refused
    registry.tag_version(
        step.candidate_version,
        {
            "lakeloop.gate": "promoted",
            "lakeloop.gate_reason": step.reason[:4000],
            ONLINE_TAG: "promoted",
            ONLINE_REASON_TAG: step.reason[:4000],
        },
    )
    online = config.gate.online
    if online.rollback_pairs and compared.version:
        registry.guard(online.alias, compared.version, f"replaced by version {step.candidate_version} (online gate)")
    else:
        registry.delete_alias(online.alias)
    return None


def _roll_back(registry: Registry, alias: str, step: OnlineStep) -> str | None:
    """The champion goes back to the guard (it must still be @previous: the registry's rollback path)."""
    previous = registry.version_by_alias(PREVIOUS)
    if previous is None or str(previous.version) != step.candidate_version:
        return f"cannot roll back to version {step.candidate_version}: @{PREVIOUS} is {previous and previous.version}"
    registry.rollback()
    registry.retire(alias, step.candidate_version, step.reason, "restored")
    return None


def _record_outcome(config: LakeloopConfig, champion: ChampionInfo, version: str, outcome: str, reason: str) -> None:
    """The retraining attempt that produced `version`, if any, ends with `outcome`; a candidate set by
    hand (`lakeloop model shadow`) is recorded as an event about the champion."""
    attempts = [
        a
        for a in retraining_policy.fold_attempts(attempt_events(config, champion))
        if a.candidate_version == version and a.outcome == retraining_policy.CANDIDATE
    ]
    kind = "online_promoted" if outcome == retraining_policy.PROMOTED else "online_retired"
    events = [outcome_event(champion, a, outcome, reason, a.candidate_version) for a in attempts] or [
        attempt_event(champion, kind, candidate_version=version, reason=reason[:4000])
    ]
    record_events(config, events)


def _close_stale_attempts(config: LakeloopConfig, champion: ChampionInfo, candidate: str | None) -> None:
    """An attempt whose version is no longer the candidate (the alias was moved or removed by hand)
    is refused, so the retraining loop does not wait for it for ever."""
    stale = [
        a
        for a in retraining_policy.fold_attempts(attempt_events(config, champion))
        if a.outcome == retraining_policy.CANDIDATE and a.candidate_version != candidate
    ]
    reason = f"no longer the online candidate (@{config.gate.online.alias} was moved or removed)"
    record_events(
        config, [outcome_event(champion, a, retraining_policy.REFUSED, reason, a.candidate_version) for a in stale]
    )
