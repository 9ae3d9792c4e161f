"""Stand-ins injected where the code takes them (a model source for the Serve app), for tests that
need no registry and no cluster."""

from __future__ import annotations

import numpy as np

from pipelines.adapters.registry import ModelRef
from pipelines.core.model_output import Scored
from serve.app import ModelServer, Pending


class FakePredictor:
    """Answers each row with its version as the prediction; `broken` raises on every call, `poison`
    on any call whose rows hold that value (as a model that cannot take some input)."""

    def __init__(self, version: str, broken: bool = False, poison: object = None) -> None:
        self.version, self.broken, self.poison = version, broken, poison

    def predict_columns(self, columns: dict[str, np.ndarray]) -> Scored:
        if self.broken:
            raise RuntimeError("cannot score")
        if self.poison is not None and any(self.poison in values.tolist() for values in columns.values()):
            raise ValueError(f"cannot score {self.poison!r}")
        rows = len(next(iter(columns.values())))
        return Scored({"prediction": np.array([self.version] * rows), "probability_1": np.full(rows, 0.5)})


class FakeSource:
    """A registry alias that tests move by hand; `down` makes it unreachable."""

    def __init__(self) -> None:
        self.version: str | None = "1"
        self.down = False
        self.broken_versions: set[str] = set()
        self.poison: object = None  # a value the loaded models raise on
        self.loads: list[str] = []

    def resolve(self, alias: str) -> ModelRef | None:
        if self.down:
            raise ConnectionError("mlflow unreachable")
        return ModelRef("m", self.version, alias, "run") if self.version else None

    def load(self, ref: ModelRef) -> FakePredictor:
        self.loads.append(ref.version)
        return FakePredictor(ref.version, broken=ref.version in self.broken_versions, poison=self.poison)


class UnbatchedServer(ModelServer):
    """The real replica, outside Serve: each request is its own batch (Serve's @serve.batch needs a
    replica context)."""

    def _size_batches(self) -> None:
        pass

    async def _score_batch(self, request: Pending):  # type: ignore[override]
        return (await self.score_requests([request]))[0]
