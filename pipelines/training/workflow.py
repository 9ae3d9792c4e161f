"""Train, evaluate, gate and register one model: what `lakeloop train`, `lakeloop train --tune`, the
monitor's retraining jobs and the demo run. The fitting strategy is passed in (a plain fit, or the
Tune search, which imports the plain fit: never the reverse)."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature

import pipelines
from pipelines.adapters import delta, ray_cluster
from pipelines.adapters.registry import (
    FAMILY_TAG,
    FINGERPRINT_TAG,
    TRIGGER_KIND_TAG,
    TRIGGER_TAG,
    ChampionState,
    Registry,
    mlflow_errors,
    require_tracking_server,
)
from pipelines.core.code_fingerprint import CodeManifest
from pipelines.core.config import LakeloopConfig
from pipelines.core.estimators import Trained
from pipelines.core.gate import GateDecision, decide
from pipelines.core.retraining_policy import CANDIDATE, MANUAL
from pipelines.feature_tables.build import build_training_set, is_stale
from pipelines.training import families, ray_train
from pipelines.training.code_version import MANIFEST_ARTIFACT, current_manifest, family_code, model_code
from pipelines.training.data import Lineage, PreparedData, current_regime, prepare, to_frame
from pipelines.training.detectors import DRIFT_ARTIFACT, DriftSuite
from pipelines.training.features import FeaturePipeline
from pipelines.training.fitted_model import LakeloopModel, evaluate_predictions
from pipelines.training.labelled_feedback import NoLabelledRows, refresh_training_table
from pipelines.training.pyfunc import LakeloopPyfunc
from pipelines.training.validation import ValidationReport, validate_table

# (config, datasets {train, validation}, the fitted feature pipeline, MLflow run id) -> the trained estimator
Fitter = Callable[[LakeloopConfig, dict, FeaturePipeline, str], Trained]
# (a registered candidate's version, held-out feature rows) -> why it must not be promoted, or None
Check = Callable[[str, pd.DataFrame], str | None]

log = logging.getLogger("lakeloop.training")
# What the evaluation imports and the fit does not: alibi-detect (3.2 s of a retraining job here: it
# imports transformers and torch's models) and the figures (matplotlib: 0.35 s). `_import_meanwhile`
# loads them while Ray Train fits and the driver waits.
EVALUATION_MODULES = ("alibi_detect.cd", "pipelines.training.plots")
MODEL_ARTIFACT = "model"
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "ray[data]==2.60.0",
    "mlflow==3.17.2",
    "pandas",
    "pyarrow",
    "pydantic>=2.7",
    "scikit-learn",
]
FAMILY_REQUIREMENTS = {"xgboost": ["xgboost-cpu==3.2.0"]}  # what a family's estimator needs to load and predict


@dataclass
class TrainOutcome:
    run_id: str
    model_version: str
    metrics: dict[str, float]
    champion_version: str | None
    champion_metrics: dict[str, float] | None
    promoted: bool
    reason: str
    lineage: dict
    family: str
    hyperparams: dict
    resumed_from_epoch: int
    seconds: dict[str, float]  # wall time per stage: prepare, fit, evaluate, gate (incl. registering)
    notes: list[str] = field(default_factory=list)  # what the run chose to do differently, and why
    trigger_id: str | None = None  # the monitor's submission id, when the monitor asked for this run
    trigger: str = MANUAL  # why it ran: drift, retry, learn, release, manual
    fingerprint: str = ""  # the code's (core/code_fingerprint), tagged on the run and the version
    online_candidate: bool = False  # passed the offline gate and went to the online one (gate.online)

    def summary(self, config: LakeloopConfig) -> str:
        metric = config.gate.metric
        verdict = (
            "promoted to champion"
            if self.promoted
            else f"the online candidate (@{config.gate.online.alias})"
            if self.online_candidate
            else "not promoted (challenger)"
        )
        tables = " + ".join(f"{t['uri']} version {t['version']}" for t in self.lineage["tables"])
        return (
            f"model {config.mlflow.registered_model} version {self.model_version}: test {metric} "
            f"{self.metrics.get(metric, float('nan')):.4f}; {verdict}: {self.reason}\nrun {self.run_id} on {tables}"
            + "".join(f"\nnote: {note}" for note in self.notes)
        )


class _Stopwatch:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


def _git_commit() -> str:
    try:
        root = Path(pipelines.__file__).resolve().parent.parent
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        return done.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _log_lineage(lineage: Lineage) -> None:
    for table in lineage.tables:
        source = DeltaDatasetSource(path=table.uri, delta_table_version=table.version)
        name = f"{Path(table.uri.rstrip('/')).name}@v{table.version}"
        mlflow.log_input(MetaDataset(source=source, name=name, digest=table.schema_fingerprint), context="training")
    mlflow.log_params(
        {
            "tables": lineage.describe()[:6000],
            "schema_fingerprint": ",".join(t.schema_fingerprint for t in lineage.tables),
        }
    )
    for uri, version in lineage.feature_sources.items():  # what a built training set was joined from
        source = DeltaDatasetSource(path=uri, delta_table_version=version)
        name = f"{Path(uri.rstrip('/')).name}@v{version}"
        mlflow.log_input(MetaDataset(source=source, name=name, digest=str(version)), context="feature source")
    if lineage.feature_sources:
        mlflow.set_tag("lakeloop.feature_sources", json.dumps(lineage.feature_sources)[:5000])
    mlflow.log_params({f"rows_{k}": v for k, v in lineage.rows.items()})
    mlflow.log_params({f"split_{k}": v for k, v in lineage.policy.items() if v is not None})
    mlflow.set_tags(
        {
            "lakeloop.git_commit": _git_commit(),
            "lakeloop.tables": lineage.describe()[:5000],
        }
    )


def training_tables(
    config: LakeloopConfig, table: str | None, version: int | None
) -> tuple[list[ValidationReport], list[str]]:
    """Validate what this run trains on: --table if given, else what train.source names
    (labelled feedback is first rebuilt from the serving logs); nothing runs on a bad table.
    Returns the tables and a note when the run had to fall back to the events table."""
    if table or config.train.source == "events":
        return [validate_table(config, table, version)], []
    try:
        labelled = refresh_training_table(config)
    except NoLabelledRows as exc:
        events = delta.tables(config).events.uri
        return [validate_table(config)], [
            f"train.source is {config.train.source}, but {exc}: trained on the events table {events} alone"
        ]
    names = [config.dataset.table, labelled] if config.train.source == "both" else [labelled]
    return [validate_table(config, name) for name in names], []


def _champion_metrics(
    registry: Registry, version: str | None, test: pd.DataFrame, config: LakeloopConfig
) -> dict | None:
    """Score the champion on the candidate's held-out rows. A champion that cannot score them
    (e.g. the table gained a feature) is no baseline: the candidate then faces the thresholds only."""
    if version is None:
        return None
    dataset = config.dataset
    try:
        predictions = registry.load_version(version).predict_frame(test[dataset.feature_names])
    except (MlflowException, ValueError, KeyError) as exc:
        mlflow.set_tag("lakeloop.champion_error", str(exc)[:500])
        log.warning("champion version %s could not score the held-out data: %s", version, str(exc)[:300])
        return None
    return evaluate_predictions(predictions, test[dataset.label], dataset)


def model_signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """Outputs only. An input schema makes MLflow check the input before `predict`: typed columns
    refuse ints in a double column and nulls in a long one, and the `any` type that takes both is
    checked value by value: in one benchmark run here, predict with it took 0.64 ms for 1 row and
    26.4 ms for 10,000 rows, without it 0.33 and 5.3 ms (benchmarks/serve_load.py). The model checks
    its input itself, vectorised, and names the column (a missing feature, a value that is not
    numeric); the features are listed in the MLmodel's metadata."""
    return ModelSignature(outputs=infer_signature(example, output).outputs)


def model_metadata(config: LakeloopConfig) -> dict:
    return {"lakeloop_features": [{"name": f.name, "kind": f.kind} for f in config.dataset.features]}


def requirements(config: LakeloopConfig, family: str) -> list[str]:
    return [*PIP_REQUIREMENTS, *FAMILY_REQUIREMENTS.get(config.train.families[family].kind, [])]


def log_model(
    model: LakeloopModel, test: pd.DataFrame, scores: dict, config: LakeloopConfig, registry: Registry, tags: dict
) -> str:
    """Log the pyfunc (preprocessor, estimator, and the package code it imports: MODEL_CODE), register
    it with `tags`, and log its test scores to the run and to the logged model (after it exists: MLflow
    3's model page shows only metrics linked to the model); return the version."""
    example = test[config.dataset.feature_names].head(5).reset_index(drop=True)
    with tempfile.TemporaryDirectory() as tmp:
        directory = model.save(Path(tmp) / "model")
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=LakeloopPyfunc(),
            artifacts={"model": str(directory)},
            code_paths=[str(model_code(Path(tmp) / "code")), *family_code(config, model.family)],
            signature=model_signature(example, model.predict_frame(example)),
            metadata=model_metadata(config),
            input_example=example,
            pip_requirements=requirements(config, model.family),
        )
        mlflow.log_artifact(str(directory / "pipeline.pkl"), artifact_path="preprocessor")
    mlflow.log_metrics({f"test_{k}": v for k, v in scores.items()}, model_id=info.model_id)
    return registry.register(info.model_uri, info.run_id, info.model_id, tags)


def log_drift_reference(model: LakeloopModel, prepared: PreparedData, config: LakeloopConfig) -> None:
    """Fit the drift detectors on a sample of the training rows and store them with the run."""
    train = current_regime(config, prepared, "train").materialize()  # after drift: what the model was trained for
    fraction = min(1.0, 2 * config.monitor.reference_rows / max(train.count(), 1))
    sample = to_frame(train.random_sample(fraction, seed=config.train.seed) if fraction < 1 else train)
    suite = DriftSuite.fit(sample[config.dataset.feature_names], model, config.monitor, seed=config.train.seed)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(suite.save(Path(tmp) / DRIFT_ARTIFACT)), artifact_path=DRIFT_ARTIFACT)


def _import_meanwhile(modules: tuple[str, ...]) -> threading.Thread:
    """Start importing `modules` on a thread; join it before they are used. Overlap it only with work
    during which the main thread imports nothing (two threads importing the same package can each see
    the other's half-initialised modules): families.driver_quiet_while_fitting says which fits
    qualify; Tune's driver imports boto3 and tensorboardX as it searches. A failed import is raised
    again, with its cause, where the module is used. (Importing the family's module and the figures
    on a thread while the data was prepared made preparing slower by as much: both hold the GIL.)"""

    def load() -> None:
        for module in modules:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)

    thread = threading.Thread(target=load, name="import-meanwhile", daemon=True)
    thread.start()
    return thread


def _datasets(prepared: PreparedData) -> dict:
    return {name: prepared.splits[name].materialize() for name in ("train", "validation")}


def _evaluate(
    config: LakeloopConfig, prepared: PreparedData, trained: Trained
) -> tuple[LakeloopModel, pd.DataFrame, dict]:
    """The candidate as a fitted model (its figures logged), its test scores, and the test rows."""
    dataset = config.dataset
    model = LakeloopModel(prepared.pipeline, trained.estimator)
    test = to_frame(prepared.raw["test"])
    predictions = model.predict_frame(test[dataset.feature_names])
    scores = evaluate_predictions(predictions, test[dataset.label], dataset)  # logged with the model
    from pipelines.training import plots  # imported during the fit where it could be (EVALUATION_MODULES)

    plots.log_evaluation_figures(trained.history, predictions, test[dataset.label], dataset)
    log_drift_reference(model, prepared, config)
    return model, test, scores


def _gate(
    config: LakeloopConfig,
    registry: Registry,
    model: LakeloopModel,
    test: pd.DataFrame,
    scores: dict,
    tags: dict[str, str],
    check: Check | None = None,
) -> tuple[str, ChampionState, dict | None, GateDecision, bool]:
    """Score the champion on the same rows, register the candidate (with `tags`), and apply the gate's
    decision; a candidate that passes it must then pass `check` (a release's smoke stage) before it is
    promoted, or, with the online gate on, becomes the online candidate (the last value: True)."""
    compared = registry.state()  # what the gate compares against, and what promotion must still find
    champion_scores = _champion_metrics(registry, compared.version, test, config)
    if champion_scores:
        mlflow.log_metrics({f"champion_test_{k}": v for k, v in champion_scores.items()})
    version = log_model(model, test, scores, config, registry, {FAMILY_TAG: model.family, **tags})
    decision = decide(scores, champion_scores, config.gate, compared.version)
    if decision.promote and check is not None:
        failed = check(version, test[config.dataset.feature_names])
        if failed:
            decision = GateDecision(False, failed)
    if decision.promote and _goes_online(config, compared, check):
        return version, compared, champion_scores, _nominate(config, registry, version, decision), True
    decision = registry.promote(version, compared, decision)
    mlflow.set_tags({"lakeloop.promoted": str(decision.promote).lower(), "lakeloop.gate_reason": decision.reason})
    online = config.gate.online
    if decision.promote and compared.version and online.mode != "off" and online.rollback_pairs:
        registry.guard(online.alias, compared.version, f"replaced by version {version} (offline gate)")
    return version, compared, champion_scores, decision, False


def _goes_online(config: LakeloopConfig, compared: ChampionState, check: Check | None) -> bool:
    """A candidate that passed the offline gate goes to the online gate when it is on and there is a
    champion to compare with live; a release (`check`: its smoke stage) is promoted offline."""
    return config.gate.online.mode != "off" and compared.version is not None and check is None


def _nominate(config: LakeloopConfig, registry: Registry, version: str, passed: GateDecision) -> GateDecision:
    """The online gate's first stage: the version becomes the candidate alias, not the champion."""
    online = config.gate.online
    reason = f"passed the offline gate ({passed.reason}); the online candidate ({online.mode})"
    registry.nominate(online.alias, version, online.mode, online.canary_percent, passed.reason)
    registry.tag_version(version, {"lakeloop.gate": CANDIDATE, "lakeloop.gate_reason": reason})
    mlflow.set_tags({"lakeloop.promoted": "false", "lakeloop.gate_reason": reason, "lakeloop.online": online.mode})
    return GateDecision(False, reason)


def train_and_register(
    config: LakeloopConfig,
    fitter: Fitter = families.fit_configured,
    job: str = "train",
    table: str | None = None,
    version: int | None = None,
    regime_start: datetime | None = None,
    trigger_id: str | None = None,
    trigger: str = MANUAL,
    pinned: list[tuple[str, int]] | None = None,
    check: Check | None = None,
) -> TrainOutcome:
    """`fitter`: families.fit_configured (train.family), or the Tune search (job "tune");
    `regime_start`: when the monitor saw the drift begin (train.regime); `trigger_id`: the monitor's
    submission id and `trigger` why it runs (drift, retry, learn, release, manual), recorded on the
    run and the model version; `pinned`: exact (table URI, version) pairs to train on instead of
    `table`/train.source (a release retrains on the champion's); `check`: what a candidate that
    passed the gate must also pass before promotion. With feature views, a training set whose
    sources moved since its build (or never built) is built first (features build). The run and
    version are tagged with the code's fingerprint, and the run carries its manifest."""
    manifest = current_manifest(config)
    tags = {
        TRIGGER_KIND_TAG: trigger,
        FINGERPRINT_TAG: manifest.fingerprint,
        **({TRIGGER_TAG: trigger_id} if trigger_id else {}),
    }
    with mlflow_errors(config.mlflow.tracking_uri), contextlib.ExitStack() as session:
        built = None
        if not pinned and table is None and is_stale(config):  # new label events or feature values
            session.enter_context(ray_cluster.ray_session(config))  # the one Ray session of this run
            built = build_training_set(config)
        if pinned:
            reports, notes = [validate_table(config, uri, v) for uri, v in pinned], []
        else:
            reports, notes = training_tables(config, table, version)  # before any Ray or MLflow work
        notes = [built.describe(), *notes] if built else notes
        return _train_and_register(config, fitter, job, reports, notes, regime_start, tags, manifest, check)


def _train_and_register(
    config: LakeloopConfig,
    fitter: Fitter,
    job: str,
    reports: list[ValidationReport],
    notes: list[str],
    regime_start: datetime | None,
    tags: dict[str, str],
    manifest: CodeManifest,
    check: Check | None,
) -> TrainOutcome:
    require_tracking_server(config.mlflow.tracking_uri)
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    mlflow.set_experiment(config.mlflow.experiment)
    registry = Registry.from_config(config)
    clock = _Stopwatch()
    with ray_cluster.ray_session(config):
        prepared = prepare(config, reports=reports, regime_start=regime_start)
        clock.lap("prepare")
        if regime_start is not None:
            notes.append(prepared.lineage.policy["note"])
        with mlflow.start_run(run_name=f"{job}-{config.dataset.table}-v{reports[0].version}") as run:
            mlflow.set_tag("lakeloop.job", job)
            _log_lineage(prepared.lineage)
            mlflow.set_tags(tags)
            mlflow.log_text(manifest.to_json(), MANIFEST_ARTIFACT)
            if notes:
                mlflow.set_tag("lakeloop.notes", " | ".join(notes)[:5000])
            importing = None
            family = config.train.family
            datasets = _datasets(prepared)
            if fitter is families.fit_configured and families.driver_quiet_while_fitting(config, family, datasets):
                families.family_module(config, family)  # imported before the thread starts
                importing = _import_meanwhile(EVALUATION_MODULES)
            trained = fitter(config, datasets, prepared.pipeline, run.info.run_id)
            if importing:
                importing.join()
            clock.lap("fit")
            nodes = ray_train.worker_nodes(mlflow.get_run(run.info.run_id).data.tags)
            mlflow.set_tag("lakeloop.worker_nodes", ",".join(nodes))  # where it trained, in rank order
            mlflow.set_tag(FAMILY_TAG, trained.estimator.family)
            mlflow.log_params({"family": trained.estimator.family, **{f"hp_{k}": v for k, v in trained.params.items()}})
            mlflow.log_param("resumed_from_epoch", trained.resumed_from_epoch)
            model, test, scores = _evaluate(config, prepared, trained)
            clock.lap("evaluate")
            model_version, compared, champion_scores, decision, online = _gate(
                config, registry, model, test, scores, tags, check
            )
            clock.lap("gate")
            mlflow.log_metrics({f"seconds_{k}": v for k, v in clock.laps.items()})
    return TrainOutcome(
        run_id=run.info.run_id,
        model_version=model_version,
        metrics=scores,
        champion_version=compared.version,
        champion_metrics=champion_scores,
        promoted=decision.promote,
        reason=decision.reason,
        online_candidate=online,
        lineage=asdict(prepared.lineage),
        family=trained.estimator.family,
        hyperparams=trained.params,
        resumed_from_epoch=trained.resumed_from_epoch,
        seconds=clock.laps,
        notes=notes,
        trigger_id=tags.get(TRIGGER_TAG),
        trigger=tags[TRIGGER_KIND_TAG],
        fingerprint=manifest.fingerprint,
    )
