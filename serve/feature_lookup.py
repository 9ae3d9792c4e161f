"""A replica's feature lookups: with feature views configured, a request sends each view's entity key
(and any request-time features) and the replica fills in the views' columns from the online store
(pipelines/adapters/online_store.py), before the request joins a batch.

- A key of the wrong type for its view (text where the online table's key is an integer, or the
  reverse) is the client's mistake: a 422 naming the record and the key, for that request only.
- An entity the store does not hold is a miss: its values are missing (imputed as any missing value)
  and counted (`lakeloop_feature_lookups_total{result="miss"}`); so is every row while a view has no
  online version a replica could load (`result="unavailable"`, e.g. never materialized, Redis down).
- Feature freshness: per request and view, the age of the oldest value found (the lookup's moment
  minus its feature time) is observed in `lakeloop_feature_age_seconds`.

A thread re-reads every view's online version each features.online.refresh_interval_s; a new version is
loaded beside the old and swapped in whole.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

import numpy as np

from pipelines.adapters.online_store import Found, ViewReader, nothing_found, open_store
from pipelines.core.config import LakeloopConfig
from serve.metrics import ServingMetrics
from serve.schemas import RequestError

log = logging.getLogger("lakeloop.serve")


class FeatureLookup:
    def __init__(
        self, config: LakeloopConfig, metrics: ServingMetrics, readers: Mapping[str, ViewReader] | None = None
    ) -> None:
        self.config, self.metrics = config, metrics
        self.views = config.features.views
        self.numeric = set(config.dataset.numeric)
        if readers is None:
            store = open_store(config)
            readers = {v.name: store.reader(v, self.numeric) for v in self.views}
        self.readers = dict(readers)
        self.model_columns = config.dataset.feature_names
        self.refresh()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feature-refresh", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        for name, reader in self.readers.items():
            if reader.refresh():
                log.info("view %s: online version %s loaded", name, reader.version)
            elif reader.last_error:
                log.warning("view %s: keeping online version %s: %s", name, reader.version, reader.last_error)

    def _run(self) -> None:
        while not self._stop.wait(self.config.features.online.refresh_interval_s):
            self.refresh()

    async def fill(self, sent: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The request's columns -> (the model's feature columns, in config order; the entity keys)."""
        keys = {k: sent[k] for k in self.config.features.entity_keys}
        columns = dict(sent)
        for view in self.views:
            reader = self.readers[view.name]
            asked = list(zip(*(keys[k] for k in view.keys), strict=True))
            self._check_types(view.name, view.keys, reader, asked)
            try:
                found = await reader.lookup(asked)
            except Exception as exc:  # noqa: BLE001 - the store unreachable (Redis down): imputed, counted
                log.warning("view %s: lookup failed: %s: %s", view.name, type(exc).__name__, exc)
                found, available = nothing_found(view.columns, self.numeric, len(asked)), False
            else:
                available = reader.version is not None
            self._count(view.name, available, found)
            columns.update({c: found.values[c] for c in view.columns})
        return {name: columns[name] for name in self.model_columns}, keys

    @staticmethod
    def _check_types(view: str, names: list[str], reader: ViewReader, asked: list[tuple]) -> None:
        if not reader.key_types:
            return  # nothing loaded: nothing to check against (every row is counted unavailable)
        for i, key in enumerate(asked):
            for name, value, kind in zip(names, key, reader.key_types, strict=True):
                if type(value) is not kind:
                    expected = "an integer" if kind is int else "text"
                    raise RequestError(422, f"records[{i}].{name}: view '{view}' keys are {expected}; got {value!r}")

    def _count(self, view: str, available: bool, found: Found) -> None:
        rows, hits = len(found.hit), int(found.hit.sum())
        if not available:
            self.metrics.feature_lookups(view, "unavailable", rows)
            return
        self.metrics.feature_lookups(view, "hit", hits)
        self.metrics.feature_lookups(view, "miss", rows - hits)
        if hits:  # one observation per request (Ray's observe is ~4 us: per value it was most of a 100-row lookup)
            self.metrics.feature_age(view, float(found.age_s[found.hit].max()))

    def describe(self) -> dict:
        """Per view: the online version held and the last refresh error."""
        return {name: {"version": r.version, "last_error": r.last_error} for name, r in self.readers.items()}

    def close(self) -> None:
        self._stop.set()
        for reader in self.readers.values():
            reader.close()
