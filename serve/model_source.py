"""Where the Serve app gets models: which version an alias points at, and loading that version.

The deployment takes any `ModelSource`, so it can be tested without a registry (the Ray e2e
examples inject their loader the same way); the registry adapter (`pipelines.adapters.registry.
Registry`) is the production one.
"""

from __future__ import annotations

from typing import Protocol

from pipelines.adapters.registry import ModelRef, Predictor


class ModelSource(Protocol):
    def resolve(self, alias: str) -> ModelRef | None: ...

    def load(self, ref: ModelRef) -> Predictor: ...
