"""Retrying calls to outside services (MLflow, the Ray Jobs API) a bounded number of times."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from pipelines.core.errors import LakeloopError

T = TypeVar("T")
log = logging.getLogger("lakeloop.retries")


class ServiceUnavailable(LakeloopError):
    """An outside service stayed unreachable (or kept failing) after the configured retries."""


def with_retries(what: str, attempts: int, fn: Callable[[], T], wait_s: float = 2.0) -> T:
    """fn() until it returns, waiting wait_s * attempt between tries; then ServiceUnavailable naming `what`."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any outage is retried, then reported
            if attempt == attempts:
                raise ServiceUnavailable(f"{what} failed after {attempts} attempts: {exc}") from None
            log.warning("%s failed (attempt %d/%d): %s", what, attempt, attempts, exc)
            time.sleep(wait_s * attempt)
    raise AssertionError("unreachable")
