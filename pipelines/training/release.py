"""Deliver a change of code like a change of data: when the code's fingerprint differs from the
champion's, train the new code on exactly the Delta table versions the champion was trained on,
gate it against the champion on the same held-out rows, pass the smoke stage, and only then promote.
The same fingerprint is released once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime

from mlflow.exceptions import MlflowException

from pipelines.adapters.registry import (
    FINGERPRINT_TAG,
    TRIGGER_KIND_TAG,
    TRIGGER_TAG,
    Registry,
    mlflow_errors,
    require_tracking_server,
)
from pipelines.core.code_fingerprint import CodeManifest, changes
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.core.retraining_policy import RELEASE
from pipelines.training import families
from pipelines.training.code_version import MANIFEST_ARTIFACT, current_manifest
from pipelines.training.workflow import Check, train_and_register

UNCHANGED, RELEASED_BEFORE, PROMOTED, REFUSED = "unchanged", "released before", "promoted", "refused"


@dataclass
class ReleaseOutcome:
    status: str  # unchanged, released before, promoted, refused
    fingerprint: str
    champion_version: str
    champion_fingerprint: str | None
    reason: str
    changes: list[str] = field(default_factory=list)  # files by hash, pins, configuration keys
    tables: list[tuple[str, int]] = field(default_factory=list)  # what the candidate trained on
    model_version: str | None = None
    training: dict | None = None  # the TrainOutcome, when it trained

    def summary(self) -> str:
        head = {
            UNCHANGED: f"nothing to release: champion version {self.champion_version} already runs code "
            f"{self.fingerprint}",
            RELEASED_BEFORE: f"code {self.fingerprint} was released before: {self.reason}",
            PROMOTED: f"released code {self.fingerprint} as version {self.model_version}, now the champion: "
            f"{self.reason}",
            REFUSED: f"code {self.fingerprint} not released (version {self.model_version} stays a challenger): "
            f"{self.reason}",
        }[self.status]
        lines = [head]
        if self.tables:
            lines.append(
                "trained on the champion's tables: " + ", ".join(f"{uri} version {v}" for uri, v in self.tables)
            )
        if self.changes:
            lines.append(f"changed since champion version {self.champion_version} ({self.champion_fingerprint}):")
            lines += [f"  {line}" for line in self.changes]
        return "\n".join(lines)


def _earlier_release(registry: Registry, fingerprint: str):
    found = [
        mv for mv in registry.versions_tagged(FINGERPRINT_TAG, fingerprint) if mv.tags.get(TRIGGER_KIND_TAG) == RELEASE
    ]
    return min(found, key=lambda mv: int(mv.version)) if found else None


def _champion_manifest(registry: Registry, run_id: str) -> CodeManifest | None:
    try:
        return CodeManifest.from_json(registry.download(run_id, MANIFEST_ARTIFACT).read_text())
    except (MlflowException, OSError, KeyError, json.JSONDecodeError):
        return None  # trained before fingerprints were recorded


def _regime_start(registry: Registry, run_id: str) -> datetime | None:
    """When the champion's run split its rows by regime (a retraining after drift), the same split."""
    start = registry.run(run_id).data.params.get("split_regime_start")
    return datetime.fromisoformat(start) if start else None


def release(config: LakeloopConfig, check: Check | None, submission_id: str | None = None) -> ReleaseOutcome:
    """Compare this process's code with the champion's and, when it differs and was not released
    before, train, gate, `check` (the smoke stage) and promote."""
    with mlflow_errors(config.mlflow.tracking_uri):
        require_tracking_server(config.mlflow.tracking_uri)
        registry = Registry.from_config(config)
        champion = registry.champion()
        if champion is None:
            raise LakeloopError(
                f"{config.mlflow.registered_model} has no champion to release against: train one first (lakeloop train)"
            )
        manifest = current_manifest(config)
        fingerprint, theirs = manifest.fingerprint, champion.tags.get(FINGERPRINT_TAG)
        outcome = ReleaseOutcome(UNCHANGED, fingerprint, champion.version, theirs, "same code")
        if theirs == fingerprint:
            return outcome
        earlier = _earlier_release(registry, fingerprint)
        if earlier is not None:
            verdict = earlier.tags.get("lakeloop.gate", "not decided")
            outcome.status, outcome.model_version = RELEASED_BEFORE, earlier.version
            outcome.reason = (
                f"version {earlier.version} (submission {earlier.tags.get(TRIGGER_TAG, 'unknown')}): {verdict}, "
                f"{earlier.tags.get('lakeloop.gate_reason', '')}"
            )
            return outcome
        before = _champion_manifest(registry, champion.run_id)
        outcome.changes = (
            changes(before, manifest) if before else ["the champion's run has no code manifest (trained before them)"]
        )
        outcome.tables = registry.run_tables(champion.run_id)
        if not outcome.tables:
            raise LakeloopError(f"champion version {champion.version}'s run logged no Delta tables to retrain on")
        regime_start = _regime_start(registry, champion.run_id)
    trained = train_and_register(
        config,
        families.fit_configured,
        "release",
        regime_start=regime_start,
        trigger_id=submission_id,
        trigger=RELEASE,
        pinned=outcome.tables,
        check=check,
    )
    outcome.status = PROMOTED if trained.promoted else REFUSED
    outcome.model_version, outcome.reason, outcome.training = trained.model_version, trained.reason, asdict(trained)
    return outcome
