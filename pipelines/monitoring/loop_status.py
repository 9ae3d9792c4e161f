"""What `lakeloop status` shows on one screen: the stack, the champion and what serves, the last drift
verdicts, retraining, and the tables. Each part is read on its own: one that cannot be read (MLflow
down, no endpoint) says so, and the others still show."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import httpx
import pyarrow.compute as pc

from pipelines.adapters import delta, local_services, ray_serve
from pipelines.adapters.online_store import describe_views
from pipelines.adapters.registry import ONLINE_EVIDENCE_TAG, ONLINE_MODE_TAG, ONLINE_TAG, Registry, mlflow_errors
from pipelines.core import drift_policy, retraining_policy
from pipelines.core.config import LakeloopConfig
from pipelines.feature_tables.build import last_build
from pipelines.monitoring import reports, retraining
from pipelines.monitoring.champion import champion_info
from pipelines.monitoring.reports import summaries
from pipelines.monitoring.upkeep import maintained_tables
from pipelines.training.detectors import PERFORMANCE

RECENT_WINDOWS = 3
RECENT_ATTEMPTS = 3


def _stack(config: LakeloopConfig) -> dict:
    if "://" in config.storage.root:
        return {"running": None, "note": "storage.root is remote: no embedded stack"}
    state = local_services.StackState.read(Path(config.storage.root) / local_services.STATE_FILE)
    if state is None:
        return {"running": False}
    return {"running": state.alive(), "mlflow": state.mlflow_url, "ray_dashboard": state.dashboard_url}


def _champion(config: LakeloopConfig) -> dict:
    with mlflow_errors(config.mlflow.tracking_uri):
        ref = Registry.from_config(config).resolve(config.serving.alias)
    if ref is None:
        return {"version": None}
    return {
        "version": ref.version,
        "health": ref.health or "ok",
        "health_reason": ref.health_reason or None,
        "trigger": ref.trigger or None,
        "fingerprint": ref.fingerprint or None,
    }


def _champion_line(champion: dict) -> str:
    line = f"version {champion.get('version')} ({champion.get('health')})"
    if champion.get("trigger"):
        line += f", trained on {champion['trigger']}"
    if champion.get("fingerprint"):
        line += f", code {champion['fingerprint']}"
    return line


def _online(config: LakeloopConfig) -> dict:
    """The online gate: its mode, the candidate (or guard) with the last evidence, and the newest
    decision the monitor took on live evidence."""
    online = config.gate.online
    with mlflow_errors(config.mlflow.tracking_uri):
        candidate = Registry.from_config(config).version_by_alias(online.alias)
    shown: dict = {"mode": online.mode, "alias": online.alias, "candidate": None, "last_decision": None}
    if candidate is not None:
        tags = candidate.tags
        shown["candidate"] = {
            "version": str(candidate.version),
            "role": tags.get(ONLINE_TAG) or "candidate",
            "mode": tags.get(ONLINE_MODE_TAG) or "shadow",
            "evidence": json.loads(tags.get(ONLINE_EVIDENCE_TAG) or "null"),
        }
    table = delta.tables(config).attempts.read()
    if table is not None:
        decided = [e for e in table.sort_by("at").to_pylist() if (e.get("reason") or "").startswith("online gate")]
        if decided:
            last = decided[-1]
            shown["last_decision"] = {
                k: str(last[k]) if k == "at" else last[k]
                for k in ("event", "candidate_version", "champion_version", "reason", "at")
            }
    return shown


def _shown(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _online_lines(online: dict) -> list[str]:
    if "error" in online:
        return [f"online gate  {online['error']}"]
    lines = [f"online gate  {online['mode']}"]
    candidate = online["candidate"]
    if candidate:
        seen = candidate["evidence"] or {}
        lines[0] += f"; @{online['alias']}: version {candidate['version']} ({candidate['role']}, {candidate['mode']})"
        if seen.get("pairs"):
            lines[0] += (
                f": {seen['metric']} {_shown(seen['candidate'])} vs the champion's {_shown(seen['champion'])} on "
                f"{seen['pairs']} labelled pairs (p {seen['p_better']:.3g} better, {seen['p_worse']:.3g} worse)"
            )
    last = online["last_decision"]
    if last:
        lines.append(
            f"             last: {last['event']} version {last['candidate_version']} at {last['at']}: {last['reason']}"
        )
    return lines


def _serving(serve_config: Path) -> dict:
    url = ray_serve.base_url(ray_serve.load_serve_config(serve_config))
    try:
        answer = httpx.get(f"{url}/model", timeout=5)
    except httpx.HTTPError as exc:
        return {"url": url, "version": None, "note": f"no answer ({type(exc).__name__})"}
    if answer.status_code != 200:
        return {"url": url, "version": None, "note": f"HTTP {answer.status_code}"}
    model = answer.json()
    return {"url": url, "version": model["version"], "backlog": model["log"]["predictions"]["pending"]}


def _drift(config: LakeloopConfig) -> dict:
    table = delta.tables(config).drift_reports.read()
    if table is None:
        return {"traffic": [], "performance": []}
    reports = table.sort_by("window_end").to_pylist()
    windows = {
        kind: [asdict(w) for w in summaries(reports, performance=kind == PERFORMANCE)[-RECENT_WINDOWS:]]
        for kind in ("traffic", PERFORMANCE)
    }
    checked = max(r["checked_at"] for r in reports) if reports else None
    return {**windows, "last_checked": str(checked) if checked else None}


def _attempts(config: LakeloopConfig) -> list[dict]:
    """The newest attempts, each with its outcome: one the monitor has not recorded yet (its job ended
    after the last pass) is read from the Jobs API and the registry, as the next pass will record it."""
    table = delta.tables(config).attempts.read()
    if table is None:
        return []
    events = table.filter(pc.is_valid(table.column("submission_id"))).sort_by("at").to_pylist()
    latest = {e["submission_id"]: e for e in events}  # each attempt's newest event
    shown = []
    for event in list(latest.values())[-RECENT_ATTEMPTS:]:
        outcome, reason, version = event["event"], event.get("reason") or "", event.get("candidate_version")
        if outcome == retraining_policy.SUBMITTED:
            ended = retraining.job_outcome(config, event["submission_id"])
            outcome, reason, version = ended if ended else ("running", reason, None)
        shown.append(
            {
                "submission_id": event["submission_id"],
                "trigger": event.get("trigger") or retraining_policy.DRIFT,
                "outcome": outcome,
                "reason": reason,
                "candidate_version": version,
                "at": str(event["at"]),
            }
        )
    return shown


def _next_step(config: LakeloopConfig) -> dict:
    """What the loop will do next for the champion (the retraining policy, read only)."""
    info = champion_info(config)
    began = drift_policy.trigger_start(
        reports.window_decisions(config, info.version), config.monitor.debounce.k, config.monitor.debounce.n
    )
    events = retraining.attempt_events(config, info)
    events += retraining.reconcile(config, info, events)  # jobs that ended since the last pass, not recorded
    plan, _ = retraining.plan(config, info, began, events)
    return {"action": plan.action, "reason": plan.reason}


def _retraining(config: LakeloopConfig) -> dict:
    return {"attempts": _attempts(config), "next": _next_step(config)}


def _tables(config: LakeloopConfig) -> list[dict]:
    found = []
    for table in [delta.tables(config).events, *maintained_tables(config)]:
        if table.exists():
            opened = table.open()
            found.append({"table": table.uri, "version": opened.version(), "files": len(opened.file_uris())})
    return found


def _features(config: LakeloopConfig) -> dict:
    """The feature views with their tables' current versions and their online versions, and the newest
    training set build."""
    tables = delta.tables(config)
    online = _online_views(config) if config.features.views else {}
    views = []
    for view in config.features.views:
        table = tables.named(view.table)
        version = table.version() if table.exists() else None
        views.append({"name": view.name, "table": table.uri, "version": version, "online": online.get(view.name)})
    return {"views": views, "last_build": last_build(config) if views else None}


def _online_views(config: LakeloopConfig) -> dict:
    try:
        return describe_views(config)
    except Exception as exc:  # noqa: BLE001 - the online store down: said, the rest of the status stands
        return {view.name: {"error": f"{type(exc).__name__}: {exc}"} for view in config.features.views}


def _online_line(online: dict | None) -> str:
    if online is None:
        return "             online: not materialized yet: lakeloop features materialize"
    if "error" in online:
        return f"             online: unreadable: {online['error']}"
    return (
        f"             online: {online['store']} version {online['version']} "
        f"({online['entities']} entities, written {online['written_at']})"
    )


def _feature_lines(features: dict) -> list[str]:
    if "error" in features:
        return [f"features     {features['error']}"]
    lines = []
    for view in features["views"]:
        lines.append(f"feature view {view['name']}: {view['table']} version {view['version']}")
        lines.append(_online_line(view["online"]))
    build = features["last_build"]
    if features["views"]:
        lines.append(
            f"             last build: {build['training_set']} version {build['version']} ({build['rows']} rows) "
            f"at {build['built_at']}, from "
            + ", ".join(f"{uri} version {version}" for uri, version in build["sources"].items())
            if build
            else "             not built yet: lakeloop features build"
        )
    return lines


def gather(config: LakeloopConfig, serve_config: Path) -> dict:
    parts: dict[str, Callable[[], object]] = {
        "stack": lambda: _stack(config),
        "champion": lambda: _champion(config),
        "serving": lambda: _serving(serve_config),
        "drift": lambda: _drift(config),
        "retraining": lambda: _retraining(config),
        "online": lambda: _online(config),
        "features": lambda: _features(config),
        "tables": lambda: _tables(config),
    }
    status = {}
    for name, read in parts.items():
        try:
            status[name] = read()
        except Exception as exc:  # noqa: BLE001 - one unreadable part must not hide the others
            status[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return status


def _verdicts(windows: list[dict]) -> str:
    return ", ".join(drift_policy.verdict(w["drift"]) for w in windows) or "none checked yet"


def describe(status: dict) -> str:
    stack, champion, served, drift = status["stack"], status["champion"], status["serving"], status["drift"]
    lines = [
        "stack        " + (stack.get("error") or ("running" if stack.get("running") else "not running")),
        "champion     " + (champion.get("error") or _champion_line(champion)),
        "serving      " + (served.get("error") or f"version {served.get('version')} at {served.get('url')}"),
    ]
    if stack.get("running"):
        lines[0] += f": MLflow {stack['mlflow']}, Ray {stack['ray_dashboard']}"
    if champion.get("health_reason"):
        lines.append(f"             DEGRADED: {champion['health_reason']}")
    if served.get("note"):
        lines[2] += f" ({served['note']})"
    if "error" in drift:
        lines.append(f"drift        {drift['error']}")
    else:
        lines.append(f"drift        last windows: {_verdicts(drift['traffic'])}; checked {drift.get('last_checked')}")
        lines.append(f"performance  last labelled windows: {_verdicts(drift[PERFORMANCE])}")
    retraining = status["retraining"]
    if "error" in retraining:
        lines.append(f"retraining   {retraining['error']}")
    else:
        lines += [
            f"retraining   {a['submission_id']} ({a['trigger']}): {a['outcome']}"
            + (f" version {a['candidate_version']}" if a["candidate_version"] else "")
            + (f": {a['reason']}" if a["reason"] else "")
            for a in retraining["attempts"]
        ] or ["retraining   none yet"]
        upcoming = retraining["next"]
        lines.append(f"next         {upcoming['action']}" + (f": {upcoming['reason']}" if upcoming["reason"] else ""))
    lines += _online_lines(status["online"])
    lines += _feature_lines(status["features"])
    tables = status["tables"]
    if isinstance(tables, dict):
        lines.append(f"tables       {tables['error']}")
    else:
        lines += [f"table        {t['table']}: version {t['version']}, {t['files']} files" for t in tables]
    return "\n".join(lines)
