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


class FailsAfterWarmUp(FakePredictor):
    """Scores the replica's warm-up (4 calls), then raises on every batch: a candidate that loads and
    fails on live traffic."""

    def __init__(self, version: str) -> None:
        super().__init__(version)
        self.calls = 0

    def predict_columns(self, columns: dict[str, np.ndarray]) -> Scored:
        self.calls += 1
        if self.calls > 4:
            raise RuntimeError("candidate cannot score live rows")
        return super().predict_columns(columns)


class FakeSource:
    """A registry alias (champion: `version`; any other alias: `candidate`, with its online mode) that
    tests move by hand; `down` makes it unreachable."""

    def __init__(self) -> None:
        self.version: str | None = "1"
        self.candidate: ModelRef | None = None
        self.down = False
        self.broken_versions: set[str] = set()
        self.failing_live: set[str] = set()  # versions that pass the warm-up, then raise
        self.poison: object = None  # a value the loaded models raise on
        self.loads: list[str] = []

    def resolve(self, alias: str) -> ModelRef | None:
        if self.down:
            raise ConnectionError("mlflow unreachable")
        if alias != "champion":
            return self.candidate
        return ModelRef("m", self.version, alias, "run") if self.version else None

    def load(self, ref: ModelRef) -> FakePredictor:
        self.loads.append(ref.version)
        if ref.version in self.failing_live:
            return FailsAfterWarmUp(ref.version)
        return FakePredictor(ref.version, broken=ref.version in self.broken_versions, poison=self.poison)


class UnbatchedServer(ModelServer):
    """The real replica, outside Serve: each request is its own batch (Serve's @serve.batch needs a
    replica context)."""

    def _size_batches(self) -> None:
        pass

    async def _score_batch(self, request: Pending):  # type: ignore[override]
        return (await self.score_requests([request]))[0]
