"""The online endpoint: Ray Serve + FastAPI, following the registry alias, logging to Delta.

    serve deploy conf/serve.yaml        (import_path: serve.app:build_app)
    lakeloop serve

Routes: POST /invocations (MLflow scoring formats), POST /predict (typed), POST /feedback,
GET /health (200 only once a model is loaded), GET /model, GET /docs. With LAKELOOP_API_KEY set
where the app is built, every route but /health needs `Authorization: Bearer <key>` (else 401).

No `from __future__ import annotations` here: FastAPI must see the real annotation objects of the
endpoints, including the request model built from the dataset config inside build_deployment.
"""

import asyncio
import hmac
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row, prediction_rows, predictions_schema
from pipelines.adapters.registry import ModelRef, Predictor, Registry
from pipelines.adapters.serving import api_key_digest
from pipelines.core.config import LakeloopConfig, load_config, parse_config_text
from serve.log_buffer import DeltaAppender
from serve.model_source import ModelSource
from serve.schemas import FeedbackRequest, RecordValidator, RequestError, mlflow_records, predict_request_model

log = logging.getLogger("lakeloop.serve")
API_KEY_ENV = "LAKELOOP_API_KEY"
OPEN_PATHS = ("/health",)  # load balancer and Kubernetes probes carry no credentials


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    predictor: Predictor
    loaded_at: str


def _warmup_row(config: LakeloopConfig) -> pd.DataFrame:
    """All-missing features: valid input for any lakeloop model (everything is imputed)."""
    return pd.DataFrame([dict.fromkeys(config.dataset.feature_names)])


class ModelWatcher:
    """Loads the alias's version, then re-checks every interval; swaps only a fully warmed model."""

    def __init__(self, source: ModelSource, config: LakeloopConfig) -> None:
        self.source = source
        self.config = config
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def check(self) -> bool:
        """One poll; True if a new model was swapped in. Errors keep the current model serving."""
        try:
            ref = self.source.resolve(self.config.serving.alias)
            if ref is None:
                return False
            if self.current and self.current.ref.version == ref.version:
                if self.current.ref != ref:  # same model, new health verdict from the monitor
                    self.current = LoadedModel(ref, self.current.predictor, self.current.loaded_at)
                return False
            predictor = self.source.load(ref)
            predictor.predict_frame(_warmup_row(self.config))
        except Exception as exc:  # noqa: BLE001 - registry outages must not affect serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "model check failed, keeping %s: %s", self.current and self.current.ref.version, self.last_error
            )
            return False
        self.current = LoadedModel(ref, predictor, datetime.now(UTC).isoformat())  # one reference swap
        self.last_error = None
        log.info("serving %s version %s", ref.name, ref.version)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.config.serving.poll_interval_s)

    def stop(self) -> None:
        self._stop.set()


def _output_rows(frame: pd.DataFrame) -> list[dict]:
    records = frame.to_dict(orient="records")
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in records]


def create_api(config: LakeloopConfig, key_digest: str | None = None) -> FastAPI:
    request_model = predict_request_model(config.dataset, config.serving.max_rows_per_request)
    api = FastAPI(
        title="lakeloop", description=f"Predictions from {config.mlflow.registered_model}@{config.serving.alias}"
    )

    @api.exception_handler(RequestError)
    async def _client_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "details": exc.details}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def _schema_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [".".join(str(p) for p in e["loc"] if p != "body") + f": {e['msg']}" for e in exc.errors()]
        return JSONResponse(
            {"error": details[0] if details else "invalid request", "details": details}, status_code=422
        )

    @api.middleware("http")
    async def _require_json(request: Request, call_next):
        if (
            request.method == "POST"
            and request.headers.get("content-type", "").split(";")[0].strip() != "application/json"
        ):
            return JSONResponse({"error": "content type must be application/json"}, status_code=415)
        return await call_next(request)

    @api.middleware("http")
    async def _require_api_key(request: Request, call_next):
        # Added last, so it runs first, before the body is read: an unauthenticated request is never scored or logged.
        if key_digest is None or request.url.path.endswith(OPEN_PATHS):
            return await call_next(request)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(api_key_digest(presented.strip()) or "", key_digest):
            return JSONResponse(
                {"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await call_next(request)

    api.state.request_model = request_model
    return api


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None


def build_deployment(config: LakeloopConfig, key_digest: str | None = None):
    """key_digest: the SHA-256 of the API key; when set, every route but /health needs the key as a
    Bearer token. Deployment options (replicas, CPUs, limits) come from the Serve config file."""
    api = create_api(config, key_digest)
    PredictRequest = api.state.request_model

    @serve.deployment(name="ModelServer")
    @serve.ingress(api)
    class ModelServer:
        def __init__(self, config_json: str, source: ModelSource | None = None) -> None:
            self.config = LakeloopConfig.model_validate_json(config_json)
            serving = self.config.serving
            self.validator = RecordValidator(self.config.dataset, serving.max_rows_per_request)
            source = source or Registry.connect(self.config.mlflow.tracking_uri, self.config.mlflow.registered_model)
            storage = self.config.storage
            self.predictions = DeltaAppender(
                storage.table_uri(serving.prediction_log.predictions_table),
                predictions_schema(self.config.dataset),
                serving.prediction_log.flush_rows,
                serving.prediction_log.flush_interval_s,
                storage.storage_options,
            )
            self.feedback = DeltaAppender(
                storage.table_uri(serving.prediction_log.feedback_table),
                FEEDBACK_SCHEMA,
                serving.prediction_log.flush_rows,
                serving.prediction_log.flush_interval_s,
                storage.storage_options,
            )
            self._predict_batch.set_max_batch_size(serving.max_batch_size)
            self._predict_batch.set_batch_wait_timeout_s(serving.batch_wait_timeout_s)
            self.watcher = ModelWatcher(source, self.config)

        @serve.batch  # sized in __init__ from serving.max_batch_size and serving.batch_wait_timeout_s
        async def _predict_batch(self, frames: list[pd.DataFrame]) -> list[tuple[LoadedModel, pd.DataFrame]]:
            model = self.watcher.current  # one model for the whole batch, even during a swap
            if model is None:
                raise RequestError(503, "no model loaded yet")
            combined = pd.concat(frames, ignore_index=True)
            output = await asyncio.to_thread(model.predictor.predict_frame, combined)
            bounds = np.cumsum([0, *(len(f) for f in frames)])
            return [
                (model, output.iloc[start:stop].reset_index(drop=True))
                for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
            ]

        async def _score(self, records: Any, request: Request) -> tuple[str, LoadedModel, list[dict]]:
            frame = self.validator.frame(records)
            if self.watcher.current is None:
                raise RequestError(503, "no model loaded yet; see GET /health")
            model, output = await self._predict_batch(frame)
            request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
            rows = _output_rows(output)
            self._log(request_id, model, frame, rows)
            return request_id, model, rows

        def _log(self, request_id: str, model: LoadedModel, frame: pd.DataFrame, rows: list[dict]) -> None:
            self.predictions.add(
                prediction_rows(
                    request_id,
                    model.ref.name,
                    model.ref.version,
                    datetime.now(UTC),
                    frame.to_dict(orient="records"),
                    rows,
                    self.config.dataset,
                )
            )

        @api.post("/invocations")
        async def invocations(self, request: Request) -> JSONResponse:
            """MLflow scoring-server compatible: dataframe_records, dataframe_split, instances, inputs."""
            _, _, rows = await self._score(mlflow_records(await _json_body(request)), request)
            return JSONResponse({"predictions": rows})

        @api.post("/predict")
        async def predict(self, body: PredictRequest, request: Request) -> dict:  # type: ignore[valid-type]
            """Typed rows of the configured features; null marks a missing value."""
            request_id, model, rows = await self._score([r.model_dump() for r in body.records], request)
            return {
                "request_id": request_id,
                "model": {"name": model.ref.name, "version": model.ref.version},
                "predictions": rows,
            }

        @api.post("/feedback", status_code=202)
        async def feedback(self, body: FeedbackRequest) -> dict:
            """The true label for a served row, for performance monitoring and retraining."""
            dataset = self.config.dataset
            if dataset.task == "classification" and str(body.label) not in dataset.class_index:
                raise RequestError(422, f"label: {body.label!r} is not one of the classes {dataset.classes}")
            self.feedback.add([feedback_row(body.request_id, body.row, body.label, datetime.now(UTC))])
            return {"accepted": True}

        @api.get("/health")
        async def health(self) -> JSONResponse:
            current = self.watcher.current
            if current is None:
                return JSONResponse({"status": "loading", "error": self.watcher.last_error}, status_code=503)
            return JSONResponse({"status": "ready", "version": current.ref.version})

        @api.get("/model")
        async def model(self) -> JSONResponse:
            current = self.watcher.current
            if current is None:
                return JSONResponse(
                    {"error": "no model loaded yet", "last_error": self.watcher.last_error}, status_code=503
                )
            ref = current.ref
            return JSONResponse(
                {
                    "name": ref.name,
                    "version": ref.version,
                    "alias": ref.alias,
                    "run_id": ref.run_id,
                    "health": ref.health or "ok",
                    "health_reason": ref.health_reason or None,
                    "loaded_at": current.loaded_at,
                    "log": {"predictions": self.predictions.counts(), "feedback": self.feedback.counts()},
                    "replica": serve.get_replica_context().replica_id.unique_id,
                    "node_id": ray.get_runtime_context().get_node_id(),
                }
            )

        def __del__(self) -> None:
            # Serve calls this when the replica drains or shuts down: write what is buffered.
            self.watcher.stop()
            self.predictions.close()
            self.feedback.close()

    return ModelServer


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (conf/serve.yaml's import_path). args: `config_yaml` (the configuration
    as YAML text: what `lakeloop serve` sends) or `config` (a path on the cluster's nodes); and
    `api_key_sha256`, else the key in $LAKELOOP_API_KEY where the app is built."""
    config = (
        parse_config_text(args["config_yaml"], "serve.yaml args.config_yaml")
        if "config_yaml" in args
        else load_config(args.get("config"))
    )
    digest = args.get("api_key_sha256") or api_key_digest(os.environ.get(API_KEY_ENV) or None)
    return build_deployment(config, digest).bind(config.model_dump_json())
