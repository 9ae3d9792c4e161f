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
import hashlib
import hmac
import json
import os
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
import ray
from ray import serve

from pipelines.config import LakeloopConfig, load_config
from pipelines.scoring import PREDICTION_COLUMN
from serve.model_source import MlflowModelSource, ModelRef, ModelSource, Predictor
from serve.prediction_log import FEEDBACK_SCHEMA, DeltaAppender, predictions_schema
from serve.schemas import FeedbackRequest, RecordValidator, RequestError, mlflow_records, predict_request_model

log = logging.getLogger("lakeloop.serve")
API_KEY_ENV = "LAKELOOP_API_KEY"
OPEN_PATHS = ("/health",)  # load balancer and Kubernetes probes carry no credentials

# Keep in step with conf/serve.yaml (a test checks they agree): `serve deploy` reads the file,
# `serve.run(build_app(...))` in tests and notebooks uses these.
DEPLOYMENT_OPTIONS: dict[str, Any] = {
    "name": "ModelServer",
    "max_ongoing_requests": 64,
    "max_queued_requests": 256,
    "graceful_shutdown_timeout_s": 20,
    "ray_actor_options": {"num_cpus": 0.5},
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 5,
        "downscale_delay_s": 30,
    },
}


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    predictor: Predictor
    loaded_at: str


def _warmup_row(config: LakeloopConfig) -> pd.DataFrame:
    """All-missing features: valid input for any lakeloop model (everything is imputed)."""
    return pd.DataFrame([{name: None for name in config.dataset.feature_names}])


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
            log.warning("model check failed, keeping %s: %s", self.current and self.current.ref.version, self.last_error)
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


def api_key_digest(api_key: str | None) -> str | None:
    """Replicas keep only the key's SHA-256: the key itself never enters a deployment's arguments,
    the dashboard or the logs."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else None


def create_api(config: LakeloopConfig, key_digest: str | None = None) -> FastAPI:
    request_model = predict_request_model(config.dataset, config.serving.max_rows_per_request)
    api = FastAPI(title="lakeloop", description=f"Predictions from {config.mlflow.registered_model}@{config.serving.alias}")

    @api.exception_handler(RequestError)
    async def _client_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "details": exc.details}, status_code=exc.status)

    @api.exception_handler(RequestValidationError)
    async def _schema_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [".".join(str(p) for p in e["loc"] if p != "body") + f": {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": details[0] if details else "invalid request", "details": details}, status_code=422)

    @api.middleware("http")
    async def _require_json(request: Request, call_next):
        if request.method == "POST" and request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "content type must be application/json"}, status_code=415)
        return await call_next(request)

    @api.middleware("http")
    async def _require_api_key(request: Request, call_next):
        # Added last, so it runs first, before the body is read: an unauthenticated request is never scored or logged.
        if key_digest is None or request.url.path.endswith(OPEN_PATHS):
            return await call_next(request)
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(api_key_digest(presented.strip()) or "", key_digest):
            return JSONResponse({"error": "missing or wrong API key: send 'Authorization: Bearer <key>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    api.state.request_model = request_model
    return api


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"malformed JSON: {exc}") from None


def build_deployment(config: LakeloopConfig, api_key: str | None = None):
    """api_key (default: $LAKELOOP_API_KEY): when set, every route but /health needs it as a Bearer token."""
    api = create_api(config, api_key_digest(api_key or os.environ.get(API_KEY_ENV)))
    PredictRequest = api.state.request_model  # noqa: N806 - a class

    @serve.deployment(**DEPLOYMENT_OPTIONS)
    @serve.ingress(api)
    class ModelServer:
        def __init__(self, config_json: str, source: ModelSource | None = None) -> None:
            self.config = LakeloopConfig.model_validate_json(config_json)
            serving = self.config.serving
            self.validator = RecordValidator(self.config.dataset, serving.max_rows_per_request)
            source = source or MlflowModelSource(self.config.mlflow.tracking_uri, self.config.mlflow.registered_model)
            storage = self.config.storage
            self.predictions = DeltaAppender(
                storage.table_uri(serving.prediction_log.predictions_table), predictions_schema(self.config.dataset),
                serving.prediction_log.flush_rows, serving.prediction_log.flush_interval_s, storage.storage_options,
            )  # fmt: skip
            self.feedback = DeltaAppender(
                storage.table_uri(serving.prediction_log.feedback_table), FEEDBACK_SCHEMA,
                serving.prediction_log.flush_rows, serving.prediction_log.flush_interval_s, storage.storage_options,
            )  # fmt: skip
            self._predict_batch.set_max_batch_size(serving.max_batch_size)
            self._predict_batch.set_batch_wait_timeout_s(serving.batch_wait_timeout_s)
            self.watcher = ModelWatcher(source, self.config)

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
        async def _predict_batch(self, frames: list[pd.DataFrame]) -> list[tuple[LoadedModel, pd.DataFrame]]:
            model = self.watcher.current  # one model for the whole batch, even during a swap
            if model is None:
                raise RequestError(503, "no model loaded yet")
            combined = pd.concat(frames, ignore_index=True)
            output = await asyncio.to_thread(model.predictor.predict_frame, combined)
            bounds = np.cumsum([0, *(len(f) for f in frames)])
            return [(model, output.iloc[a:b].reset_index(drop=True)) for a, b in zip(bounds[:-1], bounds[1:])]

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
            now = datetime.now(UTC)
            features = frame.to_dict(orient="records")
            numeric = set(self.config.dataset.numeric)
            self.predictions.add([
                {
                    "request_id": request_id, "row": i, "served_at": now,
                    "model_name": model.ref.name, "model_version": model.ref.version,
                    **{k: (None if v is None else float(v) if k in numeric else str(v)) for k, v in feats.items()},
                    "prediction": str(out.get(PREDICTION_COLUMN)),
                    "output": json.dumps(out, default=str),
                }
                for i, (feats, out) in enumerate(zip(features, rows))
            ])  # fmt: skip

        @api.post("/invocations")
        async def invocations(self, request: Request) -> JSONResponse:
            """MLflow scoring-server compatible: dataframe_records, dataframe_split, instances, inputs."""
            _, _, rows = await self._score(mlflow_records(await _json_body(request)), request)
            return JSONResponse({"predictions": rows})

        @api.post("/predict")
        async def predict(self, body: PredictRequest, request: Request) -> dict:  # type: ignore[valid-type]
            """Typed rows of the configured features; null marks a missing value."""
            request_id, model, rows = await self._score([r.model_dump() for r in body.records], request)
            return {"request_id": request_id, "model": {"name": model.ref.name, "version": model.ref.version},
                    "predictions": rows}

        @api.post("/feedback", status_code=202)
        async def feedback(self, body: FeedbackRequest) -> dict:
            """The true label for a served row, for performance monitoring and retraining."""
            dataset = self.config.dataset
            if dataset.task == "classification" and str(body.label) not in {str(c) for c in dataset.classes or []}:
                raise RequestError(422, f"label: {body.label!r} is not one of the classes {dataset.classes}")
            self.feedback.add([{"request_id": body.request_id, "row": body.row, "received_at": datetime.now(UTC),
                                "label": str(body.label)}])
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
                return JSONResponse({"error": "no model loaded yet", "last_error": self.watcher.last_error}, status_code=503)
            ref = current.ref
            return JSONResponse({"name": ref.name, "version": ref.version, "alias": ref.alias, "run_id": ref.run_id,
                                 "health": ref.health or "ok", "health_reason": ref.health_reason or None,
                                 "loaded_at": current.loaded_at, "pending_log_rows": self.predictions.pending(),
                                 "replica": serve.get_replica_context().replica_id.unique_id,
                                 "node_id": ray.get_runtime_context().get_node_id()})

        def __del__(self) -> None:
            # Serve calls this when the replica drains or shuts down: write what is buffered.
            self.watcher.stop()
            self.predictions.close()
            self.feedback.close()

    return ModelServer


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder: args {config: path to lakeloop.yaml}."""
    config = load_config(args.get("config"))
    return build_deployment(config).bind(config.model_dump_json())

