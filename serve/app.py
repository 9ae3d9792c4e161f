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
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import MutableHeaders, State
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines.adapters import delta
from pipelines.adapters.log_spool import Check, LogSpool, SpoolRefused
from pipelines.adapters.prediction_log import (
    FEEDBACK_SCHEMA,
    SHADOW_SCHEMA,
    feedback_row,
    prediction_rows,
    predictions_schema,
)
from pipelines.adapters.ray_serve import FEEDBACK_KEY_ENV, api_key_digest, api_key_from_env
from pipelines.adapters.registry import ModelRef, Predictor, Registry, release_downloads
from pipelines.core.config import LakeloopConfig, load_config, parse_config_text
from pipelines.core.model_output import Scored
from serve.access import Access
from serve.feature_lookup import FeatureLookup
from serve.metrics import Reporter, ServingMetrics
from serve.model_source import ModelSource
from serve.schemas import (
    RecordValidator,
    RequestError,
    capped,
    describe_error,
    feedback_check,
    feedback_request_model,
    mlflow_records,
    predict_request_model,
    prediction_check,
)
from serve.shadow_scoring import ShadowScorer, ShadowWork

log = logging.getLogger("lakeloop.serve")
ROUTES = ("/invocations", "/predict", "/feedback", "/health", "/model", "/docs", "/openapi.json")
METRICS_EVERY_S = 5.0  # the gauges: model version, log backlog
# The log's key for a request, made here and returned on every response. (Serve's own X-Request-Id is a
# tracing id a client may set, so two clients can send the same one: it cannot key the feedback join.)
REQUEST_ID_HEADER = "X-Lakeloop-Request-Id"


# A batch of at most this many rows is scored on the event loop when the model scored a warm-up row in
# under INLINE_MAX_ROW_S: a lakeloop model here scores 1 row in 0.11 ms and 256 rows in 0.24 ms, and
# handing the work to a thread and back costs 0.075 ms in an idle process, more in a replica whose
# GIL the spool, metrics and watcher threads share. Larger batches go to a thread, so the loop keeps
# taking requests while they are scored.
INLINE_ROWS = 256
INLINE_MAX_ROW_S = 0.001


@dataclass(frozen=True)
class LoadedModel:
    ref: ModelRef
    predictor: Predictor
    loaded_at: str
    inline_rows: int = 0  # INLINE_ROWS for a fast model, else 0: every batch is scored in a thread


def _warm_up(predictor: Predictor, config: LakeloopConfig) -> int:
    """Score an all-missing row (valid input for any lakeloop model: everything is imputed) four
    times; returns the model's inline_rows, from the fastest warm call (one call can lose the GIL)."""
    row = RecordValidator(config.dataset, 1).columns([dict.fromkeys(config.dataset.feature_names)])
    predictor.predict_columns(row)
    fastest = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        predictor.predict_columns(row)
        fastest = min(fastest, time.perf_counter() - started)
    return INLINE_ROWS if fastest < INLINE_MAX_ROW_S else 0


@dataclass(frozen=True)
class Pending:
    """A validated request waiting in the batch: its id (the log's key), its feature columns (the
    model's input), and its entity keys when the features were looked up (logged beside them)."""

    request_id: str
    columns: dict[str, np.ndarray]
    keys: dict[str, np.ndarray] = field(default_factory=dict)


def _rows(columns: dict[str, np.ndarray]) -> int:
    return len(next(iter(columns.values())))


async def _predict(model: LoadedModel, columns: dict[str, np.ndarray]) -> Scored:
    """On the event loop for a small batch of a fast model, else in a thread (the loop keeps taking
    requests while a large batch is scored)."""
    if _rows(columns) <= model.inline_rows:
        return model.predictor.predict_columns(columns)
    return await asyncio.to_thread(model.predictor.predict_columns, columns)


class ModelWatcher:
    """Loads the alias's version, then re-checks every interval; swaps only a fully warmed model.
    `alias`: default serving.alias. `optional`: the alias may be removed, and then nothing is loaded
    (the online candidate); otherwise the last model keeps serving."""

    def __init__(
        self,
        source: ModelSource,
        config: LakeloopConfig,
        on_load: Callable[[str], None] | None = None,
        alias: str | None = None,
        optional: bool = False,
    ) -> None:
        self.source = source
        self.config = config
        self.alias, self.optional = alias or config.serving.alias, optional
        self.on_load = on_load or (lambda version: None)
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._stop, self._loaded = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def wait_loaded(self, timeout_s: float) -> bool:
        """Block until the first model is loaded (True) or `timeout_s` passes (False)."""
        return self._loaded.wait(timeout_s)

    def check(self) -> bool:
        """One poll; True if a new model was swapped in. Errors keep the current model serving."""
        try:
            ref = self.source.resolve(self.alias)
            if ref is None:
                if self.optional and self.current is not None:
                    log.info(
                        "%s version %s is no longer @%s", self.current.ref.name, self.current.ref.version, self.alias
                    )
                    self.current = None
                return False
            if self.current and self.current.ref.version == ref.version:
                if self.current.ref != ref:  # same model, new health verdict from the monitor
                    self.current = replace(self.current, ref=ref)
                return False
            predictor = self.source.load(ref)
            inline_rows = _warm_up(predictor, self.config)
        except Exception as exc:  # noqa: BLE001 - registry outages must not affect serving
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "model check failed, keeping %s: %s", self.current and self.current.ref.version, self.last_error
            )
            return False
        self.current = LoadedModel(ref, predictor, datetime.now(UTC).isoformat(), inline_rows)  # one reference swap
        self.on_load(ref.version)
        self._loaded.set()
        self.last_error = None
        log.info("loaded %s version %s (@%s)", ref.name, ref.version, self.alias)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check()
            self._stop.wait(self.config.serving.poll_interval_s)

    def stop(self) -> None:
        self._stop.set()


def in_canary(request_id: str, percent: float) -> bool:
    """Whether the canary answers this request: a hash of the request id (the server's random id) below
    `percent` of its range, so the share is `percent` of requests and a retried id lands the same way."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < percent / 100 * (1 << 64)


Answered = tuple[LoadedModel, list[dict] | Exception]  # the model that answered a request, and its rows


def _as_lists(columns: dict[str, np.ndarray]) -> dict[str, list]:
    """Columns as lists of Python values (numpy scalars converted), for the log's rows."""
    return {name: values.tolist() for name, values in columns.items()}


def create_api(config: LakeloopConfig, access: Access | None = None) -> FastAPI:
    """The HTTP API: its routes call the replica attached as `api.state.server` (a ModelServer); the
    front door (request ids, the keys, the JSON content type, refusal counts) wraps every route.
    `access`: the keys' digests (serve/access.py); none: an open API."""
    serving = config.serving
    api = FastAPI(
        title="lakeloop",
        description=f"Predictions from {config.mlflow.registered_model}@{serving.alias}",
        max_body_size=serving.max_body_bytes,  # 413 before a larger body is read, chunked or not
    )

    @api.exception_handler(RequestError)
    async def _client_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s else None
        return JSONResponse(
            {"error": exc.message, "details": exc.details, "request_id": request_id_of(request)},
            status_code=exc.status,
            headers=headers,
        )

    @api.exception_handler(RequestValidationError)
    async def _schema_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [describe_error(error) for error in exc.errors()]
        return JSONResponse(
            {
                "error": details[0] if details else "invalid request",
                "details": capped(details),
                "request_id": request_id_of(request),
            },
            status_code=422,
        )

    api.state.access = access or Access.of(None, None, config.mlflow.registered_model)
    api.add_middleware(FrontDoor, access=api.state.access, state=api.state)
    api.state.key_required = api.state.access.api is not None
    _add_routes(api, config)
    return api


def _server(api: FastAPI) -> "ModelServer":
    return api.state.server


def _add_routes(api: FastAPI, config: LakeloopConfig) -> None:
    """The routes, typed by request models built from the dataset config."""
    limit = config.serving.max_rows_per_request
    PredictRequest = predict_request_model(
        config.dataset, limit, config.features.entity_keys, config.features.looked_up
    )
    FeedbackRequest = feedback_request_model(config.dataset, limit)

    @api.post("/invocations")
    async def invocations(request: Request) -> JSONResponse:
        """MLflow scoring-server compatible: dataframe_records, dataframe_split, instances, inputs."""
        request_id, _, rows = await _server(api).score(mlflow_records(await _json_body(request)), request)
        return JSONResponse({"predictions": rows, "request_id": request_id})

    @api.post("/predict")
    async def predict(body: PredictRequest, request: Request) -> dict:  # type: ignore[valid-type]
        """Typed rows of the configured features; null marks a missing value. With feature views: the
        entity key instead of the views' columns, which are looked up."""
        records = [r.model_dump() for r in body.records]  # type: ignore[attr-defined]
        request_id, model, rows = await _server(api).score(records, request)
        return {
            "request_id": request_id,
            "model": {"name": model.ref.name, "version": model.ref.version},
            "predictions": rows,
        }

    @api.post("/feedback", status_code=202)
    async def feedback(body: FeedbackRequest, request: Request) -> dict:  # type: ignore[valid-type]
        """The true label for a served row (its request id and row), for performance monitoring and
        retraining. Only ids this endpoint issued are taken; a row's first label stands unless a later
        one says `"update": true`."""
        if not api.state.access.issued(body.request_id):  # type: ignore[attr-defined]
            raise RequestError(422, "request_id: not a request id this endpoint issued (send the id /predict answered)")
        _server(api).feedback_label(body.request_id, body.row, body.label, body.update)  # type: ignore[attr-defined]
        return {"accepted": True, "request_id": request_id_of(request)}

    @api.get("/health")
    async def health() -> JSONResponse:
        body, status = _server(api).health()
        return JSONResponse(body, status_code=status)

    @api.get("/model")
    async def model() -> JSONResponse:
        body, status = _server(api).describe()
        return JSONResponse({**body, "api_key_required": api.state.key_required}, status_code=status)


class FrontDoor:
    """Every request, in order: the server's request id (in request.state and on every response,
    refusals included); the API key, before the body is read (an unauthenticated request is never
    scored or logged); the JSON content type; answers >= 400 counted.

    Plain ASGI, not `@app.middleware("http")`, which costs a task group and two streams per request:
    the same checks as an `http` middleware added 0.20 ms to an in-process request (0.04 ms with no
    middleware), as this class 0.012 ms."""

    def __init__(self, app: ASGIApp, access: Access, state: State) -> None:
        self.app, self.access, self.state = app, access, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.access.new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        refusal = _refusal(Request(scope), self.access)
        await (refusal or self.app)(scope, receive, send_with_id)
        recorder = getattr(self.state, "metrics", None)
        if status >= 400 and recorder is not None:
            path = scope["path"]
            recorder.refusal(status, path if path in ROUTES else "other")  # bounded label values


def _refusal(request: Request, access: Access) -> JSONResponse | None:
    """401 without the route's key (when one is set; /health is open), 415 for a POST that is not JSON."""
    if not access.allows(request.url.path, request.headers.get("authorization", "")):
        which = "feedback" if access.required(request.url.path) == access.feedback else "API"
        return JSONResponse(
            {"error": f"missing or wrong {which} key: send 'Authorization: Bearer <key>'"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if request.method == "POST" and content_type != "application/json":
        return JSONResponse({"error": "content type must be application/json"}, status_code=415)
    return None


def request_id_of(request: Request) -> str | None:
    """The id the server gave this request (a client's X-Request-Id is never trusted: ids key the
    feedback join, and a collision would attach one label to several rows)."""
    return getattr(request.state, "request_id", None)


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError, UnicodeDecodeError) as exc:  # also: nesting too deep, ints over 4,300 digits
        raise RequestError(400, f"malformed JSON: {str(exc)[:200]}") from None


def _spool(config: LakeloopConfig, table: str, schema, owner: str, check: Check) -> LogSpool:
    log_config = config.serving.prediction_log
    return LogSpool(
        delta.tables(config).named(table),
        schema,
        config.spool_dir,
        log_config.flush_rows,
        log_config.flush_interval_s,
        log_config.max_spool_bytes,
        owner,
        check,  # what another replica's spool holds is checked as strictly as a request
    )


class ModelServer:
    """One replica: follows the registry alias (ModelWatcher), scores batches of concurrent requests
    with one model, and spools every answered row to the prediction log before the answer leaves.
    While an online candidate is set (gate.online.alias), it follows that alias too: the candidate
    answers a canary's share of requests or none (shadow), and after the answers leave, the model that
    did not answer scores the same rows into the shadow log, for the monitor's paired test.
    `build_deployment` makes it a Serve deployment behind the API; the model source is injected (the
    registry in production, any ModelSource in tests)."""

    def __init__(self, config_json: str, source: ModelSource | None = None, access: Access | None = None) -> None:
        self.config = LakeloopConfig.model_validate_json(config_json)
        self.access = access or Access.of(None, None, self.config.mlflow.registered_model)
        serving = self.config.serving
        features = self.config.features
        self.validator = RecordValidator(
            self.config.dataset, serving.max_rows_per_request, features.entity_keys, features.looked_up
        )
        source = source or Registry.connect(self.config.mlflow.tracking_uri, self.config.mlflow.registered_model)
        owner = f"{_replica_tag()}-{os.getpid()}"
        dataset, log_config = self.config.dataset, serving.prediction_log
        self.predictions = _spool(
            self.config,
            log_config.predictions_table,
            predictions_schema(dataset, features.entity_keys),
            owner,
            prediction_check(dataset, features.entity_keys),
        )
        self.feedback = _spool(
            self.config,
            log_config.feedback_table,
            FEEDBACK_SCHEMA,
            owner,
            feedback_check(dataset, serving.max_rows_per_request, self.access.issued),
        )
        # shadow rows hold no client input (the model's output only): nothing to check when adopted
        self.shadow = _spool(self.config, log_config.shadow_table, SHADOW_SCHEMA, owner, lambda row: None)
        self._size_batches()
        self.metrics = ServingMetrics(self.config.mlflow.registered_model, self.config.dataset.task == "classification")
        self.reporter = Reporter(self._report_state, METRICS_EVERY_S)
        self.features = FeatureLookup(self.config, self.metrics) if features.views else None
        self.shadow_scorer = ShadowScorer(self.shadow, self.metrics, self.config.gate.online.max_shadow_batches).start()
        self.watcher = ModelWatcher(source, self.config, self.metrics.model_loaded)
        self.candidates = ModelWatcher(source, self.config, alias=self.config.gate.online.alias, optional=True)
        # Serve routes to a replica once its constructor returns. A replica that took traffic before
        # its model loaded answered 503 for seconds, and the ingress's least-connections balancing
        # sent it most requests (it failed fastest): half the requests failed while replicas were
        # replaced (tests/faults). So a replica is ready when it can score, or after ready_timeout_s
        # (MLflow down, no champion yet): then it answers 503 until a model loads.
        if not self.watcher.wait_loaded(serving.ready_timeout_s):
            log.warning(
                "no model after %.0f s (%s); serving 503 until one loads",
                serving.ready_timeout_s,
                self.watcher.last_error,
            )

    def _size_batches(self) -> None:
        self._score_batch.set_max_batch_size(self.config.serving.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.config.serving.batch_wait_timeout_s)

    @serve.batch  # sized in __init__ from serving.max_batch_size and serving.batch_wait_timeout_s
    async def _score_batch(self, requests: list[Pending]) -> list[tuple[LoadedModel, list[dict] | Exception]]:
        """Serve gathers concurrent requests into one batch (only inside a Serve replica)."""
        return await self.score_requests(requests)

    async def score_requests(self, requests: list[Pending]) -> list[Answered]:
        """One model for the whole batch, even during a swap. If the batch fails, each request is
        scored alone, so a value the model cannot take fails only the request that sent it. The
        scored rows of every request in the batch go to the log in one write, before any answer."""
        model = self.watcher.current
        if model is None:
            raise RequestError(503, "no model loaded yet", retry_after_s=5)
        candidate = self.candidates.current
        if candidate is not None and candidate.ref.version != model.ref.version:
            return await self._score_beside(model, candidate, requests)
        outputs = await self._predict_each(model, [r.columns for r in requests])
        answered = [(model, output if isinstance(output, Exception) else output.rows()) for output in outputs]
        self._log(requests, answered)
        return answered

    async def _score_beside(
        self, champion: LoadedModel, candidate: LoadedModel, requests: list[Pending]
    ) -> list[Answered]:
        """The batch with an online candidate: a canary's requests are answered by the candidate (by
        the champion where the candidate fails); then the other model scores every answered request
        in shadow, off the request path."""
        canary = candidate.ref.online_mode == "canary"
        chosen = [canary and in_canary(r.request_id, candidate.ref.canary_percent) for r in requests]
        answered: list[Answered] = [(champion, [])] * len(requests)
        failed: dict[int, str] = {}  # request -> why the candidate could not answer it
        for by_candidate in (False, True):
            indices = [i for i, c in enumerate(chosen) if c == by_candidate]
            if not indices:
                continue
            outputs = await self._predict_each(
                candidate if by_candidate else champion, [requests[i].columns for i in indices]
            )
            for i, output in zip(indices, outputs, strict=True):
                if by_candidate and isinstance(output, Exception):
                    failed[i] = f"{type(output).__name__}: {output}"
                    output = await self._predict_alone(champion, requests[i].columns)
                    by = champion
                else:
                    by = candidate if by_candidate else champion
                answered[i] = (by, output if isinstance(output, Exception) else output.rows())
        self._log(requests, answered)
        self._count_roles(answered, candidate, len(failed))
        self._shadow_after(champion, candidate, requests, answered, failed)
        return answered

    def _count_roles(self, answered: list[Answered], candidate: LoadedModel, candidate_failures: int) -> None:
        for by, answer in answered:
            if not isinstance(answer, Exception):
                self.metrics.scored_rows(_role(candidate) if by is candidate else "champion", "served", len(answer))
        if candidate_failures:
            self.metrics.candidate_failed(candidate_failures)

    def _shadow_after(
        self,
        champion: LoadedModel,
        candidate: LoadedModel,
        requests: list[Pending],
        answered: list[Answered],
        failed: dict[int, str],
    ) -> None:
        """Queue the shadow scoring of this batch: each answered request by the model that did not
        answer it (serve/shadow_scoring.py scores it off the request path)."""
        work = []
        for i, (request, (by, answer)) in enumerate(zip(requests, answered, strict=True)):
            if isinstance(answer, Exception):
                continue  # a 422: nothing was served to compare with
            other = champion if by is candidate and i not in failed else candidate
            role = "champion" if other is champion else _role(candidate)
            work.append(
                ShadowWork(other.ref, other.predictor, role, request.request_id, request.columns, failed.get(i))
            )
        self.shadow_scorer.submit(work)

    async def _predict_each(
        self, model: LoadedModel, requests: list[dict[str, np.ndarray]]
    ) -> list[Scored | Exception]:
        if len(requests) == 1:  # alone in the batch (low load): nothing to concatenate or split
            return [await self._predict_alone(model, requests[0])]
        try:
            output = await _predict(model, {n: np.concatenate([r[n] for r in requests]) for n in requests[0]})
        except Exception:  # noqa: BLE001 - isolate the request that caused it, below
            return [await self._predict_alone(model, r) for r in requests]
        self._count(output)
        bounds = np.cumsum([0, *map(_rows, requests)]).tolist()
        return [output.slice(start, stop) for start, stop in zip(bounds[:-1], bounds[1:], strict=True)]

    async def _predict_alone(self, model: LoadedModel, columns: dict[str, np.ndarray]) -> Scored | Exception:
        try:
            output = await _predict(model, columns)
        except Exception as exc:  # noqa: BLE001 - returned, and answered as this request's 422
            return exc
        self._count(output)
        return output

    def _count(self, output: Scored) -> None:
        self.metrics.unknown_categories(output)
        self.metrics.predictions(output)

    def _log(self, requests: list[Pending], answered: list[Answered]) -> None:
        """The answered rows of the whole batch in one spool write: a write per request cost a quarter
        of a replica's CPU per request at 32 concurrent requests (docs/benchmarks.md)."""
        logged = [
            row
            for request, (model, answer) in zip(requests, answered, strict=True)
            if not isinstance(answer, Exception)
            for row in prediction_rows(
                request.request_id,
                model.ref.name,
                model.ref.version,
                datetime.now(UTC),  # per request: the monitor's row windows cut only where it changes
                {**_as_lists(request.keys), **_as_lists(request.columns)},
                answer,
                self.config.dataset,
            )
        ]
        if not logged:
            return
        try:
            self.predictions.add(logged)
        except SpoolRefused as exc:  # storage down for long, a full disk: refuse rather than serve unlogged
            raise RequestError(503, str(exc), retry_after_s=30) from None

    async def score(self, records: Any, request: Request) -> tuple[str, LoadedModel, list[dict]]:
        """Validated records scored in a batch; (request id, the model that answered, one output per row)."""
        columns, keys = self.validator.columns(records), {}
        if self.watcher.current is None:
            raise RequestError(503, "no model loaded yet; see GET /health", retry_after_s=5)
        if self.features is not None:
            columns, keys = await self.features.fill(columns)
        request_id = request_id_of(request)
        model, answer = await self._score_batch(Pending(request_id, columns, keys))
        if isinstance(answer, Exception):
            raise RequestError(422, f"the model cannot score these rows: {str(answer)[:300]}")
        return request_id, model, answer

    def feedback_label(self, request_id: str, row: int, label: object, update: bool = False) -> None:
        try:
            self.feedback.add([feedback_row(request_id, row, label, datetime.now(UTC), update)])
        except SpoolRefused as exc:
            raise RequestError(503, str(exc), retry_after_s=30) from None

    def can_log(self) -> bool:
        """Whether answered rows can reach the prediction log: a replica that cannot is not ready."""
        snapshot = self.predictions.snapshot()
        return not snapshot["broken"] and snapshot["flushing"]

    def health(self) -> tuple[dict, int]:
        """For load balancers and probes: a status only (no error text, which can name URIs)."""
        current = self.watcher.current
        if current is None:
            return {"status": "loading"}, 503
        if not self.can_log():
            return {"status": "cannot log"}, 503
        return {"status": "ready", "version": current.ref.version}, 200

    def describe_candidate(self) -> dict | None:
        """The online candidate this replica scores beside the champion, or None."""
        candidate = self.candidates.current
        if candidate is None:
            return {"last_error": self.candidates.last_error} if self.candidates.last_error else None
        ref = candidate.ref
        return {
            "alias": ref.alias,
            "role": _role(candidate),
            "version": ref.version,
            "mode": ref.online_mode or "shadow",
            "canary_percent": ref.canary_percent if ref.online_mode == "canary" else 0.0,
            "loaded_at": candidate.loaded_at,
            "last_error": self.candidates.last_error,
        }

    def describe_features(self) -> dict | None:
        """With feature views: per view, the online version held, its last refresh error, and the rows
        this replica looked up by result."""
        if self.features is None:
            return None
        described = self.features.describe()
        for (view, result), rows in self.metrics.looked_up.items():
            described[view].setdefault("lookups", {})[result] = rows
        return described

    def describe(self) -> tuple[dict, int]:
        current = self.watcher.current
        if current is None:
            return {"error": "no model loaded yet", "last_error": self.watcher.last_error}, 503
        ref = current.ref
        body = {
            "name": ref.name,
            "version": ref.version,
            "alias": ref.alias,
            "run_id": ref.run_id,
            "health": ref.health or "ok",
            "health_reason": ref.health_reason or None,
            "loaded_at": current.loaded_at,
            "candidate": self.describe_candidate(),
            "features": self.describe_features(),
            "log": {
                "predictions": self.predictions.snapshot(),
                "feedback": self.feedback.snapshot(),
                "shadow": self.shadow.snapshot(),
            },
            "replica": _replica_tag(),
            # outside Ray (a test of the replica class) asking for the context would start a cluster
            "node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
        }
        if not self.can_log():
            body.update(health="degraded", health_reason=f"cannot log: {self.predictions.snapshot()['last_error']}")
        return body, 200

    def _report_state(self) -> None:
        self.metrics.report_lookups()
        self.metrics.report_version()
        for table, spool in (("predictions", self.predictions), ("feedback", self.feedback), ("shadow", self.shadow)):
            self.metrics.log_state(table, spool.snapshot())

    def close(self) -> None:
        """Stop the threads and commit what is spooled."""
        self.reporter.stop()
        self.watcher.stop()
        self.candidates.stop()
        self.shadow_scorer.stop()
        if self.features is not None:
            self.features.close()
        self.predictions.close()
        self.feedback.close()
        self.shadow.close()
        release_downloads()  # the models' folders (Ray ends a stopped replica without exit handlers)


def _role(candidate: LoadedModel) -> str:
    """What the second model is, in the shadow log and GET /model: the online candidate, or the guard
    (the champion a promotion replaced, kept in shadow to roll back to)."""
    return "guard" if candidate.ref.online_state == "guard" else "candidate"


def build_deployment(config: LakeloopConfig, access: Access):
    """The Serve deployment: each replica is a ModelServer that builds its API once constructed (Serve's
    late-bound ingress), so the routes and the front door's refusal counts reach this very replica.
    `access`: the keys (serve/access.py); with an API key, every route but /health needs it as a Bearer
    token (/feedback the feedback key instead, when one is set). Deployment options (replicas, CPUs,
    limits) come from the Serve config file."""
    create_api(config, access)  # an invalid dataset config fails here, where the app is built

    @serve.deployment(name="ModelServer")
    @serve.ingress()
    class Replica(ModelServer):
        def __init__(self, config_json: str) -> None:
            super().__init__(config_json, access=access)

        def __serve_build_asgi_app__(self) -> FastAPI:
            if access.api is None:
                log.warning("no API key (LAKELOOP_API_KEY was not set where the app was built): the API is open")
            api = create_api(self.config, self.access)
            api.state.server, api.state.metrics = self, self.metrics
            return api

        def __del__(self) -> None:
            # Serve calls this when the replica drains or shuts down: commit what is spooled.
            self.close()

    return Replica


def _replica_tag() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - outside a replica (unit tests)
        return "local"


def build_app(args: dict[str, Any]) -> serve.Application:
    """Serve application builder (conf/serve.yaml's import_path). args: `config_yaml` (the configuration
    as YAML text: what `lakeloop serve` sends) or `config` (a path on the cluster's nodes); and
    `api_key_sha256`, else the key in $LAKELOOP_API_KEY where the app is built (set but empty is an
    error, never an open API); `feedback_key_sha256`, else $LAKELOOP_FEEDBACK_KEY, likewise."""
    config = (
        parse_config_text(args["config_yaml"], "serve.yaml args.config_yaml")
        if "config_yaml" in args
        else load_config(args.get("config"))
    )
    access = Access.of(
        args.get("api_key_sha256") or api_key_digest(api_key_from_env()),
        args.get("feedback_key_sha256") or api_key_digest(api_key_from_env(FEEDBACK_KEY_ENV)),
        config.mlflow.registered_model,
    )
    return build_deployment(config, access).bind(config.model_dump_json())
