"""The MLflow model registry, for training, the monitor, batch inference and serving alike:
champion/previous/challenger aliases, promotion, rollback, health marks, listing, and loading a
version as a predictor.

Promotion is compare-and-set. Every move of the champion alias (a promotion or a rollback) bumps
the registered model's `lakeloop.champion_epoch` tag. A candidate compared against the champion of
epoch E first claims that epoch by creating a uniquely named registered model
(`<name>.promotion.<E>.<n>`); the tracking server's database makes that creation atomic, so when two
trainings finish at once only one moves the alias, and the other stays a challenger and says why.
A claim that never led to an alias move (the process died between the two, or MLflow failed) is
abandoned once older than `gate.claim_lease_s`: the next promotion claims `<E>.<n+1>` instead, so
the registry never wedges. Claims of older epochs are deleted after each move.

A claim is fenced: right before the alias moves, the holder reads the champion, the epoch and the
epoch's claims again, and refuses if any moved or if less than half its lease is left. A promoter
that stalled after claiming (stopped, swapped out, partitioned) for longer than the lease therefore
cannot overwrite a rival's promotion when it resumes. What is left is the span of the alias RPC
itself: a stall inside it longer than half a lease can still race a rival.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import pandas as pd
import pyarrow as pa
from mlflow import MlflowClient
from mlflow.entities import FileInfo
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.core.gate import GateDecision
from pipelines.core.model_output import Scored

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
EPOCH_TAG = "lakeloop.champion_epoch"
CLAIM = ".promotion."
LEGACY_CLAIM = ".succession."  # claims of lakeloop before epochs; pruned, never consulted
HEALTH_TAG, HEALTH_REASON_TAG = "lakeloop.health", "lakeloop.health_reason"
DEGRADED = "degraded"
TRIGGER_TAG = "lakeloop.trigger_id"  # the monitor's submission id, on the training run and its model version
FAMILY_TAG = "lakeloop.family"  # the model family a version was trained as (train.families)
TRIGGER_KIND_TAG = "lakeloop.trigger"  # why it was trained: drift, retry, learn, release, manual
FINGERPRINT_TAG = "lakeloop.code_fingerprint"  # the code, model configuration and pins it was trained with
# The online gate, on a candidate's version: how replicas score it (shadow | canary) and the canary's
# share; when it became the candidate; the looks spent; its state (candidate | promoted | retired, or
# for a replaced champion kept in shadow after a promotion: guard | kept | restored), the reason, and
# the last evidence (JSON).
ONLINE_MODE_TAG, CANARY_TAG, ONLINE_SINCE_TAG = (
    "lakeloop.online_mode",
    "lakeloop.canary_percent",
    "lakeloop.online_since",
)
ONLINE_TAG, ONLINE_REASON_TAG = "lakeloop.online", "lakeloop.online_reason"
GUARD = "guard"
ONLINE_LOOKS_TAG, ONLINE_EVIDENCE_TAG = "lakeloop.online_looks", "lakeloop.online_evidence"


class RegistryError(LakeloopError):
    """The registry is unreachable or not in the state an operation needs."""


class Predictor(Protocol):
    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame: ...

    def predict_columns(self, columns: Mapping[str, Any]) -> Scored: ...


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    alias: str
    run_id: str | None
    health: str = ""  # "degraded" when the monitor found it failing and retraining did not fix it
    health_reason: str = ""
    trigger: str = ""  # why it was trained (TRIGGER_KIND_TAG)
    fingerprint: str = ""  # the code it was trained with (FINGERPRINT_TAG)
    online_mode: str = ""  # an online candidate: shadow or canary (ONLINE_MODE_TAG)
    canary_percent: float = 0.0
    online_state: str = ""  # candidate, or guard: the replaced champion after a promotion (ONLINE_TAG)


MODEL_CODE_DIR = "code"  # where MLflow keeps a pyfunc's code_paths
OWN_PACKAGE = __name__.split(".")[0]  # lakeloop's package, imported by whoever loads a model here


def model_files(list_artifacts: Callable[[str | None], list[FileInfo]], code_dir: str) -> list[str]:
    """The artifact paths to download for a pyfunc: every top-level entry, with `code_dir` opened
    and lakeloop's own package left out of it."""
    paths = []
    for entry in list_artifacts(None):
        if entry.path == code_dir and entry.is_dir:
            paths += [c.path for c in list_artifacts(code_dir) if Path(c.path).name != OWN_PACKAGE]
        else:
            paths.append(entry.path)
    return paths


class _PyfuncPredictor:
    """Any registered pyfunc, for models not logged by lakeloop."""

    def __init__(self, model) -> None:
        self.model = model

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(self.model.predict(frame))

    def predict_columns(self, columns: Mapping[str, Any]) -> Scored:
        frame = pd.DataFrame(
            {n: c.to_pandas() if isinstance(c, pa.Array | pa.ChunkedArray) else c for n, c in columns.items()}
        )
        return Scored.of_frame(self.predict_frame(frame))


def require_tracking_server(uri: str) -> None:
    """Fail before any Ray work when the tracking server is down, naming the URI."""
    if not uri.startswith("http"):
        return
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    try:
        httpx.get(
            f"{uri.rstrip('/')}/health", timeout=5.0, auth=(user, password or "") if user else None
        ).raise_for_status()
    except httpx.HTTPError as exc:
        raise LakeloopError(
            f"MLflow tracking server {uri} is not reachable ({exc.__class__.__name__}); "
            "start one with `lakeloop stack up` or set MLFLOW_TRACKING_URI"
        ) from None


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@dataclass(frozen=True)
class ChampionState:
    """What a promotion compares and sets: the champion version and how often the alias has moved."""

    version: str | None
    epoch: int


@dataclass(frozen=True)
class Claim:
    """A held promotion claim: the epoch it replaces, its number, and when the server created it."""

    epoch: int
    number: int
    taken_at: float


_DOWNLOADS: list[weakref.finalize] = []  # each loaded version's folder removal (Registry.load), pending


def release_downloads() -> None:
    """Remove the folders of every version this process loaded, now, models still in memory: for a
    process about to be ended without its exit handlers (Ray ends a stopped Serve replica's process
    after its drain)."""
    while _DOWNLOADS:
        _DOWNLOADS.pop()()


@dataclass
class Registry:
    client: MlflowClient
    name: str
    claim_lease_s: float = 60.0

    @classmethod
    def from_config(cls, config: LakeloopConfig) -> Registry:
        return cls(MlflowClient(config.mlflow.tracking_uri), config.mlflow.registered_model, config.gate.claim_lease_s)

    @classmethod
    def connect(cls, tracking_uri: str, name: str) -> Registry:
        return cls(MlflowClient(tracking_uri), name)

    def resolve(self, alias: str) -> ModelRef | None:
        """Which version `alias` points at now (with its health mark), or None."""
        version = self.version_by_alias(alias)
        if version is None:
            return None
        return ModelRef(
            self.name,
            str(version.version),
            alias,
            version.run_id,
            version.tags.get(HEALTH_TAG, ""),
            version.tags.get(HEALTH_REASON_TAG, ""),
            version.tags.get(TRIGGER_KIND_TAG, ""),
            version.tags.get(FINGERPRINT_TAG, ""),
            version.tags.get(ONLINE_MODE_TAG, ""),
            float(version.tags.get(CANARY_TAG) or 0.0),
            version.tags.get(ONLINE_TAG, ""),
        )

    def load(self, ref: ModelRef) -> Predictor:
        """A registered version, ready to predict on raw feature frames. Its downloaded directory is
        removed once the predictor is garbage-collected (a replica that swapped models drops the old
        one), at this process's exit, or by `release_downloads`, not before: a user family's code may
        import from it lazily."""
        import mlflow

        mlflow.set_tracking_uri(self.client.tracking_uri)
        directory = self.download_model(ref.version)
        try:
            model = mlflow.pyfunc.load_model(str(directory))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            python_model = model.unwrap_python_model()
        except Exception:  # noqa: BLE001 - not a PythonModel flavour
            python_model = None
        # lakeloop's own models (a pyfunc wrapping a predictor) skip MLflow's schema enforcement: the
        # caller has validated the rows. Anything else goes through the pyfunc.
        inner = getattr(python_model, "model", None)
        predictor = inner if hasattr(inner, "predict_columns") else _PyfuncPredictor(model)
        with contextlib.suppress(TypeError):  # a predictor that takes no weak reference keeps its directory
            _DOWNLOADS[:] = [pending for pending in _DOWNLOADS if pending.alive]
            _DOWNLOADS.append(weakref.finalize(predictor, shutil.rmtree, directory, True))
        return predictor

    def download_model(self, version: str) -> Path:
        """A version's pyfunc in a new local directory, which the caller removes (`load` does), without
        lakeloop's own package from its code: this process has imported `pipelines` already (this
        module is in it), so Python never reads the model's copy, 97 of the demo model's 106 files.
        Loading that model took 0.40 s with them and 0.12 s without on a quiet machine. A user family's
        modules in the code are downloaded as before."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repo = get_artifact_repository(self.client.get_model_version_download_uri(self.name, version))
        directory = Path(tempfile.mkdtemp(prefix="lakeloop-model-"))
        for path in model_files(repo.list_artifacts, MODEL_CODE_DIR):
            repo.download_artifacts(path, dst_path=str(directory))
        return directory

    def load_version(self, version: str) -> Predictor:
        return self.load(ModelRef(self.name, str(version), "", None))

    def register(self, model_uri: str, run_id: str, model_id: str | None, tags: Mapping[str, str]) -> str:
        """A new version of this registered model (created on first use) from a logged model; returns it."""
        try:
            self.client.create_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        created = self.client.create_model_version(
            self.name, source=model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
        )
        return str(created.version)

    def tag_version(self, version: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.name, version, key, value)

    def run(self, run_id: str):
        """A training run: its params, metrics (latest values) and tags."""
        return self.client.get_run(run_id)

    def version_run(self, version: str):
        """The training run of a registered version."""
        return self.run(self.client.get_model_version(self.name, version).run_id)

    def download(self, run_id: str, artifact_path: str) -> Path:
        """A run's artifact (file or directory) in a local temporary directory."""
        return Path(self.client.download_artifacts(run_id, artifact_path))

    def state(self) -> ChampionState:
        try:
            model = self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if _not_found(exc):
                return ChampionState(None, 0)
            raise
        version = model.aliases.get(CHAMPION)
        return ChampionState(None if version is None else str(version), int(model.tags.get(EPOCH_TAG, 0)))

    def version_by_alias(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise

    def champion(self) -> ModelVersion | None:
        return self.version_by_alias(CHAMPION)

    def _claims(self, prefix: str) -> list:
        found = self.client.search_registered_models(filter_string=f"name LIKE '{prefix}%'")
        return [m for m in found if m.name.startswith(prefix)]

    def _claim_numbers(self, epoch: int) -> dict[int, Any]:
        prefix = f"{self.name}{CLAIM}{epoch}."
        return {int(m.name[len(prefix) :]): m for m in self._claims(prefix) if m.name[len(prefix) :].isdigit()}

    def _claim(self, epoch: int, holder: str) -> Claim | None:
        """Atomically claim the right to move the alias away from epoch `epoch`."""
        taken = self._claim_numbers(epoch)
        number = 0
        if taken:
            newest = max(taken)
            if time.time() - taken[newest].creation_timestamp / 1000 < self.claim_lease_s:
                return None  # another promotion holds it (or died less than a lease ago)
            number = newest + 1  # abandoned: claim the next number, never delete the old one
        try:
            created = self.client.create_registered_model(
                f"{self.name}{CLAIM}{epoch}.{number}",
                tags={"lakeloop.claim_holder": holder},
                description=f"lakeloop promotion lock of {self.name} (champion epoch {epoch}): {holder}",
            )
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return None
            raise
        return Claim(epoch, number, created.creation_timestamp / 1000)

    def _take_over(self, compared: ChampionState, holder: str) -> Claim | str:
        """Claim the champion as it was compared: the claim, or the reason it cannot be replaced."""
        current = self.state()
        if current != compared:
            return f"champion moved from {compared.version} to {current.version} during evaluation; not promoted"
        claim = self._claim(compared.epoch, holder)
        if claim is None:
            return f"another promotion is replacing champion {compared.version} right now; not promoted"
        if self.state() != compared:  # moved between our read and our claim
            return f"champion moved from {compared.version} during the claim; not promoted"
        return claim

    def _fence(self, claim: Claim, compared: ChampionState) -> str | None:
        """Just before the alias moves: the reason the claim no longer holds, or None."""
        held = time.time() - claim.taken_at
        if held > self.claim_lease_s / 2:
            return (
                f"the promotion stalled {held:.1f} s after claiming (lease {self.claim_lease_s:g} s); "
                "another promotion may own the champion now; not promoted"
            )
        current = self.state()
        if current != compared:
            moved = f"champion moved from {compared.version} to {current.version}"
            return f"{moved} while this promotion stalled; not promoted"
        if max(self._claim_numbers(claim.epoch), default=claim.number) != claim.number:
            return f"another promotion claimed champion {compared.version} while this one stalled; not promoted"
        return None

    def _move(self, version: str, compared: ChampionState, claim: Claim, previous: str | None) -> str | None:
        """Fence, then previous, alias, epoch: the refusal if the fence failed. Alias before the epoch:
        a reader between the two still sees the old epoch, whose claim is held, so it cannot promote too."""
        refused = self._fence(claim, compared)
        if refused:
            return refused
        if previous:
            self.client.set_registered_model_alias(self.name, PREVIOUS, previous)
        self.client.set_registered_model_alias(self.name, CHAMPION, version)
        self.client.set_registered_model_tag(self.name, EPOCH_TAG, str(compared.epoch + 1))
        self._prune_claims(compared.epoch)
        return None

    def _prune_claims(self, used_epoch: int) -> None:
        """Delete claims of epochs before the one just used (nobody can claim those any more); the
        used epoch's claim stays, so a promotion that read that epoch late still finds it taken."""
        for claim in self._claims(f"{self.name}{CLAIM}") + self._claims(f"{self.name}{LEGACY_CLAIM}"):
            epoch = claim.name[len(self.name) :].split(".")[2]
            if LEGACY_CLAIM in claim.name or (epoch.isdigit() and int(epoch) < used_epoch):
                try:
                    self.client.delete_registered_model(claim.name)
                except MlflowException as exc:
                    if not _not_found(exc):
                        raise

    def record(self, version: str, decision: GateDecision) -> None:
        self.tag_version(
            version,
            {"lakeloop.gate": "promoted" if decision.promote else "refused", "lakeloop.gate_reason": decision.reason},
        )

    def replace_champion(self, version: str, compared: ChampionState) -> str | None:
        """Compare-and-set: `version` becomes the champion (the one replaced, @previous) if the champion
        is still `compared`; else the reason it was not."""
        claim = self._take_over(compared, f"version {version} replaces {compared.version or 'no champion'}")
        return claim if isinstance(claim, str) else self._move(version, compared, claim, compared.version)

    def promote(self, version: str, compared: ChampionState, decision: GateDecision) -> GateDecision:
        """Apply a gate decision made against `compared`; refuse if the champion moved since."""
        if decision.promote:
            refused = self.replace_champion(version, compared)
            if refused:
                decision = GateDecision(False, refused)
        self.record(version, decision)
        if not decision.promote:
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return decision

    def nominate(self, alias: str, version: str, mode: str, canary_percent: float, reason: str) -> None:
        """Make `version` the online candidate (`alias`), scored by the replicas in `mode`; its looks
        and evidence start again (a version can be a candidate more than once: as the guard later)."""
        self.tag_version(
            version,
            {
                ONLINE_MODE_TAG: mode,
                CANARY_TAG: f"{canary_percent:g}",
                ONLINE_SINCE_TAG: str(time.time()),
                ONLINE_LOOKS_TAG: "0",
                ONLINE_EVIDENCE_TAG: "null",
                ONLINE_TAG: "candidate",
                ONLINE_REASON_TAG: reason[:4000],
            },
        )
        self.set_alias(alias, version)

    def guard(self, alias: str, replaced: str, reason: str) -> None:
        """After a promotion, the replaced champion becomes `alias` in shadow: the guard the monitor
        compares the new champion with, to roll back a promotion that is worse live."""
        self.nominate(alias, replaced, "shadow", 0.0, reason)
        self.tag_version(replaced, {ONLINE_TAG: GUARD})

    def retire(self, alias: str, version: str, reason: str, state: str = "retired") -> None:
        """The candidate (or guard) leaves: the alias is removed (if it still points at `version`), the
        state and reason kept."""
        self.tag_version(version, {ONLINE_TAG: state, ONLINE_REASON_TAG: reason[:4000]})
        current = self.version_by_alias(alias)
        if current is not None and str(current.version) == str(version):
            self.delete_alias(alias)

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)

    def delete_alias(self, alias: str) -> None:
        with contextlib.suppress(MlflowException):  # already gone
            self.client.delete_registered_model_alias(self.name, alias)

    def rollback(self) -> tuple[str, str]:
        current, previous = self.state(), self.version_by_alias(PREVIOUS)
        if current.version is None:
            raise RegistryError(f"model '{self.name}' has no champion to roll back")
        if previous is None:
            raise RegistryError(f"model '{self.name}' has no 'previous' version to roll back to")
        claim = self._take_over(current, f"rollback from {current.version} to {previous.version}")
        if isinstance(claim, str):
            raise RegistryError(f"model '{self.name}': {claim.removesuffix('; not promoted')}; try again")
        self.client.set_model_version_tag(self.name, current.version, "lakeloop.rolled_back", "true")
        refused = self._move(str(previous.version), current, claim, None)
        if refused:
            raise RegistryError(f"model '{self.name}': {refused.removesuffix('; not promoted')}; try again")
        self.client.delete_registered_model_alias(self.name, PREVIOUS)
        return current.version, str(previous.version)

    def set_health(self, version: str, reason: str | None) -> None:
        """Mark a champion degraded (failing on recent data and retraining did not fix it), or clear it."""
        self.client.set_model_version_tag(self.name, version, HEALTH_TAG, DEGRADED if reason else "ok")
        self.client.set_model_version_tag(self.name, version, HEALTH_REASON_TAG, reason or "")

    def versions_tagged(self, key: str, value: str) -> list[ModelVersion]:
        return self.client.search_model_versions(f"name = '{self.name}' and tags.`{key}` = '{value}'")

    def pinned_tables(self) -> dict[str, set[int]]:
        """The Delta table versions the registered versions' training runs read (their lineage, logged
        as MLflow dataset inputs): table URI -> versions that must stay readable."""
        pinned: dict[str, set[int]] = {}
        try:
            found = self.client.search_model_versions(f"name = '{self.name}'")
        except MlflowException as exc:
            if _not_found(exc):
                return pinned
            raise
        for run_id in {mv.run_id for mv in found if mv.run_id}:
            for uri, version in self.run_tables(run_id):
                pinned.setdefault(uri, set()).add(version)
        return pinned

    def run_tables(self, run_id: str) -> list[tuple[str, int]]:
        """The (Delta table URI, version) pairs a training run read, in the order it logged them."""
        tables = []
        for given in self.client.get_run(run_id).inputs.dataset_inputs:
            if given.dataset.source_type != "delta_table":
                continue
            source = json.loads(given.dataset.source)
            # training always logs the version it read, and MLflow 3.17 writes no version for 0
            # (DeltaDatasetSource.to_dict tests it for truth): a missing one is version 0
            tables.append((source["path"], int(source.get("delta_table_version") or 0)))
        return tables

    def versions(self) -> list[dict]:
        try:
            aliases = self.client.get_registered_model(self.name).aliases
        except MlflowException as exc:
            if _not_found(exc):
                return []
            raise
        rows = []
        for mv in self.client.search_model_versions(f"name = '{self.name}'"):
            run = self.client.get_run(mv.run_id) if mv.run_id else None
            test_metrics = {
                k: round(v, 4) for k, v in (run.data.metrics if run else {}).items() if k.startswith("test_")
            }
            rows.append(
                {
                    "version": mv.version,
                    "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    "gate": mv.tags.get("lakeloop.gate", ""),
                    "reason": mv.tags.get("lakeloop.gate_reason", ""),
                    "health": mv.tags.get(HEALTH_TAG, ""),
                    "health_reason": mv.tags.get(HEALTH_REASON_TAG, ""),
                    "trigger": mv.tags.get(TRIGGER_KIND_TAG, ""),
                    "fingerprint": mv.tags.get(FINGERPRINT_TAG, ""),
                    "online": mv.tags.get(ONLINE_TAG, ""),
                    "online_mode": mv.tags.get(ONLINE_MODE_TAG, ""),
                    "online_reason": mv.tags.get(ONLINE_REASON_TAG, ""),
                    "online_evidence": json.loads(mv.tags.get(ONLINE_EVIDENCE_TAG) or "null"),
                    "run_id": mv.run_id,
                    "metrics": test_metrics,
                }
            )
        return sorted(rows, key=lambda r: int(r["version"]))


@contextmanager
def mlflow_errors(tracking_uri: str) -> Iterator[None]:
    """MLflow's errors become one line naming the tracking server (a user error, not a traceback)."""
    try:
        yield
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {tracking_uri}: {exc.message}") from None


def registry_call(config: LakeloopConfig, fn):
    """fn(registry) with MLflow's errors as one line."""
    with mlflow_errors(config.mlflow.tracking_uri):
        return fn(Registry.from_config(config))
