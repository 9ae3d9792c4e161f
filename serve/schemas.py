"""Request and response schemas built from the dataset config, and MLflow payload parsing.

Every request path ends in the same record validation, so an error always names the field:
`records[3].age: Input should be a valid number`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)

from pipelines.core.config import DatasetConfig

MLFLOW_FORMATS = ("dataframe_records", "dataframe_split", "instances", "inputs")
MAX_DETAILS = 20  # errors listed in a 422; the rest are counted (a 1 MB body once made a 5 MB answer)


class RequestError(Exception):
    """A client mistake: an HTTP status in the 4xx range and a message naming the problem."""

    def __init__(
        self, status: int, message: str, details: list[str] | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.retry_after_s = retry_after_s  # 503s: when to try again


def _encodable(text: str) -> str:
    """Text that can be logged and stored: a lone surrogate ("\\ud800") is valid JSON but no UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid text (contains a lone surrogate)") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_encodable)]


def record_model(dataset: DatasetConfig, keys: Sequence[str] = (), looked_up: Sequence[str] = ()) -> type[BaseModel]:
    """One row of raw features: every configured feature, nothing else. null means missing
    (imputed like in training); NaN, infinities and values of the wrong type are refused. With
    feature views (`keys`): the entity key instead of the `looked_up` features, which the replica
    looks up (a key is an integer or text, required)."""
    fields: dict[str, Any] = dict.fromkeys(keys, (Text | StrictInt, ...))
    for feature in dataset.features:
        if feature.name in looked_up or feature.name in fields:
            continue
        if feature.kind == "numeric":
            fields[feature.name] = (Annotated[float | None, Field(strict=True)], ...)
        else:
            fields[feature.name] = (Text | StrictInt | StrictBool | None, ...)
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    known, from_views = frozenset(fields), frozenset(looked_up)

    def only_features(cls: type, record: Any) -> Any:
        """Unknown keys as one error per record, before any field is validated: a 1 MB record of
        80,000 unknown keys held a replica's event loop for 0.5 s as 80,000 errors."""
        if isinstance(record, dict) and not known.issuperset(record):
            sent = sorted(k for k in record if k in from_views)
            if sent:
                raise ValueError(
                    f"{', '.join(map(repr, sent[:5]))}: looked up by {', '.join(keys)} (features.views); do not send"
                )
            unknown = sorted(k for k in record if k not in known)
            more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            raise ValueError(f"unknown fields (not configured features): {', '.join(map(repr, unknown[:5]))}{more}")
        return record

    validators = {"only_features": model_validator(mode="before")(only_features)}
    return create_model("FeatureRecord", __config__=config, __validators__=validators, **fields)


def capped(details: list[str]) -> list[str]:
    """The first MAX_DETAILS error lines, and how many more there were."""
    if len(details) <= MAX_DETAILS:
        return details
    return [*details[:MAX_DETAILS], f"... and {len(details) - MAX_DETAILS} more errors"]


def predict_request_model(
    dataset: DatasetConfig, max_rows: int, keys: Sequence[str] = (), looked_up: Sequence[str] = ()
) -> type[BaseModel]:
    """The typed /predict body (more than max_rows records is 413, checked before row validation)."""
    record = record_model(dataset, keys, looked_up)
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(min_length=1, description=f"raw feature rows, at most {max_rows}")),
    )


def feedback_request_model(dataset: DatasetConfig, max_rows: int) -> type[BaseModel]:
    """The /feedback body: a served row (its request id and position) and its true label, which must
    be one of the classes, or a finite number for regression."""
    if dataset.task == "classification":
        classes = dataset.class_index

        def _a_class(label: str | int | bool) -> str | int | bool:
            if str(label) not in classes:
                raise ValueError(f"{label!r} is not one of the classes {dataset.classes}")
            return label

        label_type: Any = Annotated[Text | StrictInt | StrictBool, AfterValidator(_a_class)]
    else:
        label_type = Annotated[StrictInt | StrictFloat, Field(allow_inf_nan=False)]
    return create_model(
        "FeedbackRequest",
        __config__=ConfigDict(extra="forbid"),
        request_id=(Annotated[Text, Field(min_length=1, max_length=64)], ...),
        row=(int, Field(0, ge=0, lt=max_rows, description="row of the original request")),
        label=(label_type, ...),
        update=(StrictBool, Field(False, description="replace the row's earlier label (else the first one stands)")),
    )


class RecordValidator:
    def __init__(
        self, dataset: DatasetConfig, max_rows: int, keys: Sequence[str] = (), looked_up: Sequence[str] = ()
    ) -> None:
        self.dataset = dataset
        self.max_rows = max_rows
        self._records = TypeAdapter(list[record_model(dataset, keys, looked_up)])
        self.keys = list(keys)
        self.sent = [*self.keys, *(n for n in dataset.feature_names if n not in looked_up and n not in keys)]

    def columns(self, records: Any) -> dict[str, np.ndarray]:
        """Validated records -> the columns sent (the entity keys, then the features in config order;
        the model's frame and the log's rows are both built from these: going back from a DataFrame to
        lists cost a tenth of a replica's time at 32 concurrent requests)."""
        if not isinstance(records, list):
            raise RequestError(422, "records must be a list of objects")
        if not records:
            raise RequestError(422, "empty batch: send at least one record")
        if len(records) > self.max_rows:
            raise RequestError(413, f"batch of {len(records)} records exceeds the limit of {self.max_rows}")
        try:
            rows = self._records.validate_python(records)
        except ValidationError as exc:
            details = [describe_error(error, root="records") for error in exc.errors()]
            raise RequestError(422, details[0], capped(details)) from None
        # by column: numeric ones as floats (None as NaN); categorical ones as objects, so that an int
        # category stays 7 next to a missing value (a float column would make it 7.0, logged as "7.0")
        numeric = set(self.dataset.numeric)
        return {
            name: np.array([getattr(row, name) for row in rows], dtype=float if name in numeric else object)
            for name in self.sent
        }


def describe_error(error: dict, root: str = "") -> str:
    """One pydantic error as `records[1].age: message` (FastAPI's `body` step left out)."""
    path = root
    for step in error["loc"]:
        if step != "body":
            path += f"[{step}]" if isinstance(step, int) else (f".{step}" if path else str(step))
    message = "unknown field (not a configured feature)" if error["type"] == "extra_forbidden" else error["msg"]
    return f"{path}: {message.removeprefix('Value error, ')}"


def _split_records(payload: Any) -> list:
    if (
        not isinstance(payload, dict)
        or not isinstance(payload.get("columns"), list)
        or not isinstance(payload.get("data"), list)
    ):
        raise RequestError(422, "dataframe_split needs 'columns' (list) and 'data' (list of rows)")
    columns = payload["columns"]
    bad = [i for i, row in enumerate(payload["data"]) if not isinstance(row, list) or len(row) != len(columns)]
    if bad:
        raise RequestError(422, f"dataframe_split.data[{bad[0]}]: expected a list of {len(columns)} values")
    return [dict(zip(columns, row, strict=True)) for row in payload["data"]]


def mlflow_records(body: Any) -> list:
    """The MLflow scoring-server JSON formats -> a list of record dicts."""
    if not isinstance(body, dict):
        raise RequestError(422, f"expected a JSON object with one of: {', '.join(MLFLOW_FORMATS)}")
    present = [key for key in MLFLOW_FORMATS if key in body]
    if len(present) != 1:
        raise RequestError(422, f"expected exactly one of: {', '.join(MLFLOW_FORMATS)}; got {sorted(body) or 'none'}")
    key = present[0]
    payload = body[key]
    if key == "dataframe_split":
        return _split_records(payload)
    if key in ("instances", "inputs") and isinstance(payload, dict):
        lengths = {len(v) if isinstance(v, list) else -1 for v in payload.values()}
        if len(lengths) != 1 or -1 in lengths:
            raise RequestError(422, f"{key}: columnar input needs lists of equal length")
        return [dict(zip(payload, values, strict=True)) for values in zip(*payload.values(), strict=True)]
    return payload


def feedback_check(dataset: DatasetConfig, max_rows: int, issued: Callable[[str], bool]):
    """A spooled feedback row (adopted from another process's spool) checked as /feedback checks a
    request: a request id this endpoint issued, a row number, a label that is one of the classes (or a
    finite number)."""
    classes = dataset.class_index

    def check(row: dict) -> str | None:
        request_id, number, label = row.get("request_id"), row.get("row"), row.get("label")
        if not isinstance(request_id, str) or not issued(request_id):
            return "request_id: not a request id this endpoint issued"
        if not isinstance(number, int) or not 0 <= number < max_rows:
            return f"row: {number!r} is not a row of a request"
        if dataset.task == "classification" and str(label) not in classes:
            return f"label: {label!r} is not one of the classes {dataset.classes}"
        if dataset.task == "regression" and not _finite(label):
            return f"label: {label!r} is not a finite number"
        return None

    return check


def prediction_check(dataset: DatasetConfig, keys: Sequence[str] = ()):
    """A spooled prediction row (adopted) checked for what /predict guarantees of a served row: each
    numeric feature a finite number or null, each categorical a string or null, each entity key text."""
    numeric = set(dataset.numeric)

    def check(row: dict) -> str | None:
        for key in keys:
            if not isinstance(row.get(key), str):
                return f"{key}: {row.get(key)!r} is not an entity key"
        for name in dataset.feature_names:
            value = row.get(name)
            if value is None:
                continue
            if name in numeric and not _finite(value):
                return f"{name}: {value!r} is not a finite number"
            if name not in numeric and not isinstance(value, str):
                return f"{name}: {value!r} is not a category"
        return None

    return check


def _finite(value: object) -> bool:
    try:
        return not isinstance(value, bool) and math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
