"""Typed configuration loaded from YAML; unknown keys and bad values are errors naming file and key.

The ecosystem's own environment variables win over the file where they exist
(RAY_ADDRESS, MLFLOW_TRACKING_URI), so the same conf/ works on a laptop and on a cluster.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.core.errors import ConfigError
from pipelines.core.metrics import known_metrics

DEFAULT_CONFIG_PATH = Path("conf/lakeloop.yaml")
CONFIG_YAML_ENV = "LAKELOOP_CONFIG_YAML"
CONFIG_ENV = "LAKELOOP_CONFIG"
STORAGE_ROOT_ENV = "LAKELOOP_STORAGE_ROOT"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# storage-option keys that hold credentials, in AWS, GCS and Azure spellings (e.g. aws_secret_access_key,
# google_service_account_key, azure_storage_master_key, sas_token), whatever the case
SECRET_WORDS = re.compile(
    r"secret|password|token|access_key|account_key|master_key|private_key|sas|credential|signature", re.IGNORECASE
)


class StorageConfig(StrictModel):
    root: str = "./lakeloop-data"
    storage_options: dict[str, str] = Field(default_factory=dict)

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, options: dict[str, str]) -> dict[str, str]:
        """The config travels to jobs, replicas and MLflow; credentials must not ride along."""
        secret = sorted(k for k in options if SECRET_WORDS.search(k))
        if secret:
            raise ValueError(
                f"{', '.join(secret)}: credentials do not belong in the config; set them in the "
                f"environment (e.g. {secret[0].upper()}), where deltalake reads them"
            )
        return options

    @field_validator("root")
    @classmethod
    def _absolute(cls, root: str) -> str:
        """A local relative root is fixed against the working directory at load time, so Serve
        replicas and Ray workers (whose working directories differ) see the same tables."""
        return root if "://" in root else str(Path(root).expanduser().resolve())

    def resolve(self, name: str) -> str:
        """A name relative to the root (a table, a file the stack keeps there), or a full path/URI used
        as is."""
        if "://" in name or name.startswith("/"):
            return name
        if name.startswith((".", "~")) or "/" in name:  # a path the user typed, relative to where they are
            return str(Path(name).expanduser().resolve())
        if "://" in self.root:
            return f"{self.root.rstrip('/')}/{name}"
        return str(Path(self.root).resolve() / name)


class FeatureSpec(StrictModel):
    name: str = Field(min_length=1)
    kind: Literal["numeric", "categorical"]


class SplitConfig(StrictModel):
    strategy: Literal["time", "hash"] = "time"
    key: str | None = None
    validation_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.strategy == "hash" and not self.key:
            raise ValueError("split.key is required when split.strategy is 'hash'")
        if self.validation_fraction + self.test_fraction >= 0.9:
            raise ValueError("validation_fraction + test_fraction must leave at least 10% for training")
        return self

    @property
    def train_fraction(self) -> float:
        return 1.0 - self.validation_fraction - self.test_fraction


class DatasetConfig(StrictModel):
    table: str = "events"
    # each categorical keeps a slot for its most frequent values; rarer ones share one: the model's
    # width and the request's cost follow the features, not the number of category values
    max_categories: int = Field(64, ge=1)
    features: list[FeatureSpec] = Field(min_length=1)
    label: str = Field(min_length=1)
    task: Literal["classification", "regression"]
    classes: list[str | int] | None = None
    event_time: str = Field(min_length=1)
    split: SplitConfig = Field(default_factory=SplitConfig)

    @model_validator(mode="after")
    def _check(self) -> DatasetConfig:
        names = [f.name for f in self.features]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"feature names must be unique; repeated: {', '.join(duplicates)}")
        for reserved in (self.label, self.event_time):
            if reserved in names:
                raise ValueError(f"column '{reserved}' cannot be both a feature and the label/event time")
        if self.task == "classification":
            if not self.classes or len(self.classes) < 2:
                raise ValueError("classes must list at least two label values for classification")
            if len(set(map(str, self.classes))) != len(self.classes):
                raise ValueError("classes must be unique")
        elif self.classes is not None:
            raise ValueError("classes is only valid for task 'classification'")
        return self

    @property
    def class_index(self) -> dict[str, int]:
        """Each class label (as text, however the table or a client typed it) -> its index: the
        network's output column, the probability column's position."""
        return {str(c): i for i, c in enumerate(self.classes or [])}

    def encode_labels(self, labels: pd.Series) -> np.ndarray:
        """Class indices of labels (-1 for a value that is not a class). A typed column's distinct
        values become text once, not each row (1M rows: 0.15 s -> 0.005 s); an object column stays
        row by row, where factorising would take True for 1."""
        if labels.dtype == object:
            return labels.astype(str).map(self.class_index).fillna(-1).to_numpy(np.int64)
        codes, distinct = pd.factorize(labels, use_na_sentinel=False)
        return pd.Series(distinct).astype(str).map(self.class_index).fillna(-1).to_numpy(np.int64)[codes]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "numeric"]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "categorical"]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def required_columns(self) -> list[str]:
        cols = [*self.feature_names, self.label, self.event_time]
        if self.split.strategy == "hash" and self.split.key not in cols:
            cols.append(self.split.key)  # type: ignore[arg-type]
        return cols


class RayConfig(StrictModel):
    address: str | None = None
    dashboard: str = "http://127.0.0.1:8265"  # the dashboard's HTTP address: Jobs API and Serve REST API
    # Ray's Jobs client waits forever for an answer: a dashboard that accepts and never answers hung the monitor.
    request_timeout_s: float = Field(30, gt=0)
    num_cpus: int | None = Field(None, ge=1)
    object_store_memory_mb: int | None = Field(None, ge=64)


class MLflowConfig(StrictModel):
    tracking_uri: str = "http://127.0.0.1:5000"
    experiment: str = "lakeloop"
    registered_model: str = "lakeloop-churn"

    @field_validator("tracking_uri")
    @classmethod
    def _no_userinfo(cls, uri: str) -> str:
        if re.match(r"^[a-z0-9+.-]+://[^/@]*@", uri, re.IGNORECASE):  # the value is not echoed: it holds a password
            raise ValueError(
                "credentials in the URI are not accepted; set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD instead"
            )
        return uri


SearchKind = Literal["loguniform", "uniform", "choice", "randint"]


class SearchDomain(StrictModel):
    kind: SearchKind
    values: list[float | int] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> SearchDomain:
        if self.kind != "choice" and len(self.values) != 2:
            raise ValueError(f"'{self.kind}' takes exactly two values [low, high]")
        return self


class MLPParams(StrictModel):
    """lakeloop's MLP (family kind `mlp`): the network and its optimiser."""

    lr: float = Field(3e-3, gt=0)
    hidden: int = Field(64, ge=1)
    depth: int = Field(2, ge=1, le=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(256, ge=1)
    weight_decay: float = Field(0.0, ge=0)


class TorchOptimizer(StrictModel):
    """How a user's torch module (family kind `torch`) is trained; its other params go to its constructor."""

    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    weight_decay: float = Field(0.0, ge=0)


class XGBoostParams(StrictModel):
    """Gradient-boosted trees (family kind `xgboost`, Ray Train's XGBoostTrainer). The defaults grow
    trees like scikit-learn's HistGradientBoosting (31 leaves, learning rate 0.1, leaves held to a few
    rows' weight) and stop on the validation split's log loss. In the learning curve of 2026-12-05 they
    came within 0.01 of it at every point (500-4,000 rows since a change) on the churn, SEA and Agrawal
    streams (docs/benchmarks.md)."""

    eta: float = Field(0.1, gt=0, le=1)
    max_leaves: int = Field(31, ge=0)
    max_depth: int = Field(0, ge=0)  # 0: the leaves bound the tree
    # a leaf must hold this much hessian (about 12-33 rows near p = 0.5-0.9, like HistGradientBoosting's
    # 20 rows a leaf): 1.0 fitted leaves of a few rows, 0.813 against 0.831 on churn at 500 rows; 5 cost
    # Agrawal 0.026 at 500 rows (docs/benchmarks.md)
    min_child_weight: float = Field(3.0, ge=0)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_cat_to_onehot: int = Field(4, ge=1)  # categorical slots up to this many split one-vs-rest, more by partition
    max_rounds: int = Field(1000, ge=1)
    early_stopping_rounds: int = Field(30, ge=1)  # rounds without a better validation score before it stops
    # a report (metrics, a checkpoint) every this many rounds: each costs about 0.1 s of a demo fit
    # (10 against 100: 9 reports against 1, 1 s), and 25 rounds are under a second of work to redo
    rounds_per_report: int = Field(25, ge=1)
    # once early stopping has chosen the round count, boost that many rounds again on the training and
    # validation rows together (the gate's test rows stay held out): the model learns from 85% of the
    # rows instead of 70% (docs/benchmarks.md, "refit")
    refit: bool = True


FamilyKind = Literal["mlp", "xgboost", "torch", "sklearn"]
PARAMS_MODELS: dict[str, type[StrictModel]] = {"mlp": MLPParams, "xgboost": XGBoostParams, "torch": TorchOptimizer}


class FamilySpec(StrictModel):
    """A model family: `mlp` (lakeloop's MLP on Ray Train's TorchTrainer), `xgboost` (XGBoostTrainer),
    `torch` (your nn.Module, `class_path`, trained by the same loop as the MLP) or `sklearn` (your
    estimator with the scikit-learn API, `class_path`). `params`: for mlp and xgboost their settings
    (checked by name); for torch the optimiser's (lr, batch_size, weight_decay) and the module's
    constructor arguments; for sklearn the estimator's. `search_space`: what Tune may vary."""

    kind: FamilyKind
    class_path: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, SearchDomain] = Field(default_factory=dict)
    encoding: Literal["slots", "onehot"] | None = None  # sklearn: how categoricals reach it (default onehot)

    @model_validator(mode="after")
    def _check(self) -> FamilySpec:
        if self.kind in ("torch", "sklearn") and not self.class_path:
            raise ValueError(f"class_path is required for kind '{self.kind}' (e.g. 'my_package.models:MyModel')")
        if self.kind in ("mlp", "xgboost") and self.class_path:
            raise ValueError(f"class_path is only for kinds torch and sklearn, not '{self.kind}'")
        if self.encoding and self.kind != "sklearn":
            raise ValueError("encoding is only for kind sklearn (mlp and torch read one-hot, xgboost slots)")
        model = PARAMS_MODELS.get(self.kind)
        if model is not None and self.kind != "torch":
            unknown = sorted((set(self.params) | set(self.search_space)) - set(model.model_fields))
            if unknown:
                raise ValueError(f"{', '.join(unknown)}: not a setting of kind '{self.kind}'")
            model.model_validate(self.params)
        return self

    def settings(self, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The params with `overrides` (a Tune trial's), validated for mlp and xgboost (with defaults)."""
        merged = {**self.params, **(overrides or {})}
        model = PARAMS_MODELS.get(self.kind)
        if self.kind in ("mlp", "xgboost"):
            return model.model_validate(merged).model_dump()
        if self.kind == "torch":
            optimizer = TorchOptimizer.model_validate(
                {k: v for k, v in merged.items() if k in TorchOptimizer.model_fields}
            )
            return {**merged, **optimizer.model_dump()}
        return merged


BUILT_IN_FAMILIES = {"mlp": FamilySpec(kind="mlp"), "xgboost": FamilySpec(kind="xgboost")}


class RegimeConfig(StrictModel):
    """How a retraining after drift uses its rows. The monitor passes when the drift began (the
    first drifted window of the trigger); rows from then on are the current regime."""

    # Rows since the drift began are split by time on their own, so the new concept reaches training,
    # validation and test; older rows only train, with a weight. A time split over everything put every
    # new-regime row into validation and test, and the model learned only the old rule.
    min_rows: int = Field(300, ge=20)  # fewer rows since the drift began: one time split over everything
    # Older rows together weigh as much as this many new rows: a prior that counts while the regime is
    # small and fades as its own rows accumulate. At 280 new rows, 0.1 of them (28) gained a point over
    # the new rows alone, 0.5 cost 3-4 points, an unweighted union 20 (benchmarks/recovery.py). Against
    # older rows worth 0.1 of the new ones however many there were, a worth of 30 scored higher at 8 of
    # the learning curve's 12 points (up to +0.007), lower at 3 (up to -0.004) (benchmarks/learning_curve.py).
    old_rows_worth: float = Field(30.0, ge=0)
    max_old_rows: int = Field(50_000, ge=0)  # only the newest older rows are kept


class TrainConfig(StrictModel):
    num_workers: int = Field(2, ge=1)  # at most; a small training split gets one per rows_per_worker rows
    rows_per_worker: int = Field(100_000, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0)
    # a training split of at most this many rows, fitted by one worker, is fitted in the process that
    # runs the training, through Ray Train's local mode (training/ray_train.in_process); 0: never
    local_mode_rows: int = Field(50_000, ge=0)
    use_gpu: bool = False
    # how workers spread over nodes: PACK fills a node first; SPREAD / STRICT_SPREAD use one node per worker
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_epochs: int = Field(15, ge=1)
    patience: int = Field(3, ge=1)
    max_failures: int = Field(2, ge=0)
    cache_rows: int = Field(
        5_000_000, ge=0
    )  # a worker keeps a shard this small in memory after epoch 1; 0: stream always
    seed: int = 0
    storage_path: str | None = None  # default: <storage.root>/ray_results
    # what training reads: the dataset table, served rows labelled through /feedback, or both
    source: Literal["events", "feedback", "both"] = "both"
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    # the family `lakeloop train` fits; `families` adds to (or replaces settings of) the built-in mlp and xgboost
    family: str = "xgboost"
    families: dict[str, FamilySpec] = Field(default_factory=dict)

    @field_validator("families", mode="before")
    @classmethod
    def _with_built_ins(cls, families: Any) -> Any:
        """The built-in families are always there; under their own names their kind goes without saying."""
        if not isinstance(families, Mapping):
            return families
        given = {
            name: {"kind": name, **spec} if name in BUILT_IN_FAMILIES and isinstance(spec, Mapping) else spec
            for name, spec in families.items()
        }
        return {**BUILT_IN_FAMILIES, **given}

    @model_validator(mode="after")
    def _family_known(self) -> TrainConfig:
        if self.family not in self.families:
            raise ValueError(f"family: '{self.family}' is not one of the families: {', '.join(sorted(self.families))}")
        return self

    @property
    def spec(self) -> FamilySpec:
        return self.families[self.family]


class TuneConfig(StrictModel):
    num_samples: int = Field(2, ge=1)  # trials per searched family
    max_concurrent_trials: int = Field(1, ge=1)
    grace_period: int = Field(2, ge=1)
    reduction_factor: int = Field(2, ge=2)
    families: list[str] | None = (
        None  # the families a search samples from, each with its search_space (default: train.family)
    )


class OnlineGateConfig(StrictModel):
    """The second stage of the gate: a candidate that passed the offline gate becomes `alias` (not the
    champion), the replicas score it beside the champion on live traffic (shadow: the champion answers;
    canary: a share of requests is answered by the candidate), and the monitor promotes or retires it
    on the paired labelled rows (pipelines/monitoring/online_gate.py). off: the offline gate promotes."""

    mode: Literal["off", "shadow", "canary"] = "off"
    alias: str = Field("candidate", min_length=1)
    canary_percent: float = Field(10.0, gt=0, lt=100)  # of requests, chosen by a hash of the request id
    alpha: float = Field(0.05, gt=0, lt=1)  # the false-promotion rate, spent over `looks`
    looks: int = Field(20, ge=1)  # monitor passes that may decide; the last one retires without a gain
    min_pairs: int = Field(200, ge=10)  # labelled rows both models scored, before any decision
    max_pairs: int = Field(3000, ge=10)  # no significant gain by then: retired
    max_error_rows: int = Field(20, ge=1)  # rows the candidate failed to score live before it is retired
    # min_pairs rows served this long after the nomination, none of them scored by the candidate (no
    # replica could load or warm it up): retired.
    load_timeout_s: float = Field(120.0, gt=0)
    # After a promotion (online or offline, with the online gate on) the replaced champion keeps
    # scoring in shadow as the guard for this many labelled pairs: if it is significantly better
    # live, the champion is rolled back. 0: no guard.
    rollback_pairs: int = Field(1000, ge=0)
    # When the champion is below its floor (gate.thresholds[gate.metric]) on the paired rows, a candidate
    # significantly not worse than it by this much (of gate.metric) or more is promoted too. 0: only better.
    failing_champion_margin: float = Field(0.01, ge=0)
    bootstrap_rounds: int = Field(500, ge=100)  # the paired bootstrap's resamples (metrics other than accuracy)
    max_shadow_batches: int = Field(1024, ge=1)  # per replica, waiting for shadow scoring; more are dropped

    @model_validator(mode="after")
    def _pairs(self) -> OnlineGateConfig:
        if self.min_pairs > self.max_pairs:
            raise ValueError(f"gate.online.min_pairs ({self.min_pairs}) exceeds max_pairs ({self.max_pairs})")
        if self.alias in ("champion", "previous", "challenger"):
            raise ValueError(f"gate.online.alias: '{self.alias}' is one of the aliases the registry moves itself")
        return self


class GateConfig(StrictModel):
    metric: str = "roc_auc"
    min_improvement: float = 0.0
    thresholds: dict[str, float] = Field(default_factory=dict)
    # When the champion itself fails the thresholds on the newest rows (it is failing, e.g. after a
    # concept change): promote_better serves a candidate that beats it by min_improvement even if the
    # candidate is below a floor; require_thresholds keeps every floor.
    when_champion_fails: Literal["promote_better", "require_thresholds"] = "promote_better"
    claim_lease_s: float = Field(60.0, gt=0)  # a promotion claim older than this without an alias move was abandoned
    online: OnlineGateConfig = Field(default_factory=OnlineGateConfig)


class PredictionLogConfig(StrictModel):
    predictions_table: str = "predictions"
    feedback_table: str = "feedback"
    labelled_table: str = "labelled_feedback"  # served rows joined with their labels, for retraining
    shadow_table: str = "shadow_predictions"  # what the model that did not answer said about the same rows
    flush_rows: int = Field(500, ge=1)
    flush_interval_s: float = Field(2.0, gt=0)
    # Every served row is spooled to local disk before the response (it survives the replica being
    # killed) and committed from there; default: <storage.root>/_spool, or /tmp/lakeloop-spool-<uid> for
    # object-store roots. Past max_spool_bytes (storage down) the endpoint answers 503, never drops rows.
    spool_dir: str | None = None
    max_spool_bytes: int = Field(1 << 30, ge=1 << 16)


class ServingConfig(StrictModel):
    alias: str = "champion"
    # A poll is one registry lookup per alias: 7.8 ms, 2.1 ms of the replica's CPU, here. Every 5 s
    # left a promoted model waiting 2.5 s on average before it served.
    poll_interval_s: float = Field(1.0, gt=0)
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.0, ge=0)  # 0: batches form from what queued during the last one
    max_rows_per_request: int = Field(1000, ge=1)
    ready_timeout_s: float = Field(120, ge=0)  # a new replica takes traffic once its model is loaded, or after this
    max_body_bytes: int = Field(1 << 20, ge=1024)  # larger request bodies get 413 before they are read
    prediction_log: PredictionLogConfig = Field(default_factory=PredictionLogConfig)


READ_TASK_CPUS = 1.0  # what each Ray Data read task reserves (its default)


class BatchInferenceConfig(StrictModel):
    # Inputs up to this size are scored in the driver, with no actors. On 2 cores a warm pool scored 1M
    # rows at 0.65x one process's speed (2.2 vs 1.4 s) and drew level only at 10M rows.
    inline_rows: int = Field(2_000_000, ge=0)
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    batch_size: int = Field(4096, ge=1)
    # A pool actor that has not started by then (no CPU free for it: the cluster's CPUs held by Serve
    # replicas and other jobs) is stopped; with none started the input is scored in the driver.
    actor_start_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> BatchInferenceConfig:
        if self.max_actors < self.min_actors:
            raise ValueError("max_actors must be at least min_actors")
        return self

    def starting_actors(self, free_cpus: float) -> int:
        """The pool starts with as many actors as the free CPUs hold after one CPU for Ray Data's read
        tasks (each reserves one; a pool that took that CPU waited forever for its input, on 2 CPUs
        shared with Serve), within min_actors..max_actors."""
        spare = max(0.0, free_cpus - READ_TASK_CPUS)
        return max(self.min_actors, min(self.max_actors, int(spare / self.cpus_per_actor + 1e-9)))


class DebounceConfig(StrictModel):
    k: int = Field(2, ge=1)
    n: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DebounceConfig:
        if self.k > self.n:
            raise ValueError("debounce.k cannot exceed debounce.n")
        return self


class RetryConfig(StrictModel):
    """After a retraining whose candidate was refused (or whose job failed): when to try again."""

    after_rows: int = Field(200, ge=1)  # new training rows (events or labels) needed before the next attempt ...
    backoff: float = Field(2.0, ge=1)  # ... times this for each further attempt
    max_attempts: int = Field(3, ge=1)  # per champion; then the loop reports itself degraded
    tune_from_attempt: int = Field(2, ge=1)  # this attempt and later ones search hyperparameters (--tune)


class LearningConfig(StrictModel):
    """After a drift, keep retraining the champion as labelled rows of the new regime accumulate."""

    enabled: bool = True
    growth: float = Field(2.0, gt=1)  # retrain once the regime's labelled rows are this many times the champion's
    min_rows: int = Field(200, ge=1)  # ... counting at least this many for the champion


class MonitorConfig(StrictModel):
    window_rows: int = Field(500, ge=10)
    window_seconds: float | None = Field(None, gt=0)
    min_rows: int = Field(200, ge=10)
    alpha: float = Field(0.05, gt=0, lt=1)
    reference_rows: int = Field(2000, ge=50)
    mmd_rows: int = Field(300, ge=20)
    mmd_reference_rows: int = Field(1000, ge=20)
    mmd_permutations: int = Field(100, ge=10)
    debounce: DebounceConfig = Field(default_factory=DebounceConfig)
    feedback_window_rows: int = Field(200, ge=10)  # labelled rows per performance window
    label_join_wait_s: float = Field(600, ge=0)  # a label waits this long for its served row to land in Delta
    max_metric_drop: float = Field(0.05, ge=0)  # performance drift: gate metric this much worse than at test
    interval_s: float = Field(60, gt=0)
    drift_reports_table: str = "drift_reports"
    retrain_entrypoint: str = "python -m pipelines.train --json"
    retries: int = Field(3, ge=1)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    learning: LearningConfig = Field(default_factory=LearningConfig)
    attempts_table: str = "retraining_attempts"
    metrics_host: str = "127.0.0.1"  # the looping monitor's Prometheus endpoint
    metrics_port: int | None = Field(9464, ge=1, le=65535)  # None: no endpoint


class MaintenanceConfig(StrictModel):
    """Table upkeep (`lakeloop data maintain`, and the monitor loop every `every_s`): compaction, a log
    checkpoint, and vacuum of the files removed more than `retention_hours` ago."""

    tables: list[str] | None = None  # None: the serving logs, labelled feedback and drift reports
    retention_hours: int = Field(168, ge=0)  # Delta's default: a week of time travel
    every_s: float | None = Field(3600, gt=0)  # None: the monitor loop never runs it


class FeatureViewConfig(StrictModel):
    """A feature table keyed by an entity: each row holds the entity's feature values as of its
    event time, known from its created time (a late correction has a later created time)."""

    name: str = Field(min_length=1)
    table: str = Field(min_length=1)  # a Delta table under storage.root, or a path/URI
    keys: list[str] = Field(min_length=1)  # the entity key, in both this table and the label events
    event_time: str = Field(min_length=1)
    created_time: str | None = None  # when the value became known (default: its event time)
    ttl_s: float | None = Field(None, gt=0)  # older values count as missing
    columns: list[str] = Field(min_length=1)  # the features it adds


class LabelEventsConfig(StrictModel):
    table: str = Field(min_length=1)  # entity keys, event time, label, and any request-time features
    event_time: str = Field(min_length=1)


class OnlineStoreConfig(StrictModel):
    """Where `lakeloop features materialize` writes each view's latest values and replicas look them up."""

    store: Literal["delta", "redis"] = "delta"  # delta: a versioned table per view, held in each replica's memory
    table_prefix: str = Field("online_", min_length=1)  # delta: the table of view v is <prefix><v> under storage.root
    redis_url: str = "redis://127.0.0.1:6379/0"  # redis: one server every replica reaches (several nodes)
    refresh_interval_s: float = Field(5.0, gt=0)  # replicas re-check each view's online version this often


class FeatureTablesConfig(StrictModel):
    """Training sets built by joining label events to feature views point-in-time (`lakeloop features
    build` writes one to dataset.table). No views: dataset.table is one wide table, as it always was."""

    labels: LabelEventsConfig | None = None
    views: list[FeatureViewConfig] = Field(default_factory=list)
    buckets: int = Field(16, ge=1)  # the join's partitions, by a hash of each view's entity key
    builds_table: str = "feature_builds"  # one row per build: the training set's version and its sources'
    online: OnlineStoreConfig = Field(default_factory=OnlineStoreConfig)

    @property
    def entity_keys(self) -> list[str]:
        """Every view's key columns, once each: what a request sends instead of the views' columns."""
        return list(dict.fromkeys(k for view in self.views for k in view.keys))

    @property
    def looked_up(self) -> list[str]:
        """The views' feature columns: looked up at serving time, never sent."""
        return [c for view in self.views for c in view.columns]

    @model_validator(mode="after")
    def _consistent(self) -> FeatureTablesConfig:
        if self.views and self.labels is None:
            raise ValueError("features.labels: the label event table is needed to join features.views")
        names = [v.name for v in self.views]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"features.views: the name {', '.join(repeated)} is used twice")
        columns = [c for v in self.views for c in v.columns]
        twice = sorted({c for c in columns if columns.count(c) > 1})
        if twice:
            raise ValueError(f"features.views: the column {', '.join(twice)} comes from two views")
        return self


class LakeloopConfig(StrictModel):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    dataset: DatasetConfig
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MLflowConfig = Field(default_factory=MLflowConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    batch_inference: BatchInferenceConfig = Field(default_factory=BatchInferenceConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    maintenance: MaintenanceConfig = Field(default_factory=MaintenanceConfig)
    features: FeatureTablesConfig = Field(default_factory=FeatureTablesConfig)

    @model_validator(mode="after")
    def _gate_fits_the_task(self) -> LakeloopConfig:
        unknown_families = sorted(set(self.tune.families or []) - set(self.train.families))
        if unknown_families:
            raise ValueError(f"tune.families: {', '.join(unknown_families)} not in train.families")
        task, known = self.dataset.task, known_metrics(self.dataset.task)
        if self.gate.metric not in known:
            raise ValueError(
                f"gate.metric: '{self.gate.metric}' is not a {task} metric; choose one of {', '.join(known)}"
            )
        unknown = sorted(set(self.gate.thresholds) - set(known))
        if unknown:
            raise ValueError(
                f"gate.thresholds: {', '.join(unknown)} not {task} metrics; choose from {', '.join(known)}"
            )
        return self

    @property
    def spool_dir(self) -> Path:
        configured = self.serving.prediction_log.spool_dir
        if configured:
            return Path(configured).expanduser()
        if "://" in self.storage.root:  # a directory of this user's own: spools are private (log_spool)
            return Path(tempfile.gettempdir()) / f"lakeloop-spool-{os.getuid()}"
        return Path(self.storage.root) / "_spool"

    @property
    def train_storage_path(self) -> str:
        return self.train.storage_path or self.storage.resolve("ray_results")


def _format_error(source: str, error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"{source}: {loc}: {message}" if item["loc"] else f"{source}: {message}")
    return "\n".join(lines)


def _apply_environment(raw: dict[str, Any]) -> dict[str, Any]:
    overrides = {
        ("ray", "address"): os.environ.get("RAY_ADDRESS"),
        ("ray", "dashboard"): os.environ.get("RAY_API_SERVER_ADDRESS"),  # what `ray job submit` reads too
        ("mlflow", "tracking_uri"): os.environ.get("MLFLOW_TRACKING_URI"),
        ("storage", "root"): os.environ.get(STORAGE_ROOT_ENV),
    }
    for (section, key), value in overrides.items():
        if value:
            current = raw.get(section) or {}
            if isinstance(current, dict):
                raw[section] = {**current, key: value}
    return raw


def parse_config(raw: Any, source: str = "<config>") -> LakeloopConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    try:
        return LakeloopConfig.model_validate(_apply_environment(dict(raw)))
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc)) from None


def resolve_config_path(path: str | os.PathLike[str] | None = None) -> Path:
    return Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None) -> LakeloopConfig:
    """From `path`, else the YAML text in $LAKELOOP_CONFIG_YAML (how the monitor hands its exact
    configuration to a retraining job on any node), else the file $LAKELOOP_CONFIG or the default."""
    if path is None and os.environ.get(CONFIG_YAML_ENV):
        return parse_config_text(os.environ[CONFIG_YAML_ENV], f"${CONFIG_YAML_ENV}")
    source = resolve_config_path(path)
    try:
        text = source.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{source}: configuration file not found (pass --config or set {CONFIG_ENV})") from None
    return parse_config_text(text, str(source))


def dump_config(config: LakeloopConfig) -> str:
    """The configuration as YAML text, as `parse_config_text` reads it: how it travels to jobs and replicas."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def parse_config_text(text: str, source: str) -> LakeloopConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    return parse_config(raw, source)
