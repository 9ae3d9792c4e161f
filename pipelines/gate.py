"""The promotion gate: a pure decision on candidate vs champion metrics from the same held-out data."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.config import GateConfig
from pipelines.metrics import greater_is_better


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def _threshold_failures(candidate: dict[str, float], thresholds: dict[str, float]) -> list[str]:
    failures = []
    for metric, bound in thresholds.items():
        value = candidate.get(metric)
        if value is None or not math.isfinite(value):
            failures.append(f"{metric} is missing")
        elif greater_is_better(metric) and value < bound:
            failures.append(f"{metric} {value:.4f} is below the floor {bound:.4f}")
        elif not greater_is_better(metric) and value > bound:
            failures.append(f"{metric} {value:.4f} is above the ceiling {bound:.4f}")
    return failures


def decide(
    candidate: dict[str, float], champion: dict[str, float] | None, gate: GateConfig, champion_version: str | None = None
) -> GateDecision:
    """Champion metrics None: no champion, or one that could not score this data (champion_version set)."""
    failures = _threshold_failures(candidate, gate.thresholds)
    if failures:
        return GateDecision(False, "fails absolute thresholds: " + "; ".join(failures))
    metric = gate.metric
    ours = candidate.get(metric)
    if ours is None or not math.isfinite(ours):
        return GateDecision(False, f"candidate has no finite {metric}")
    if champion is None:
        first = f"champion {champion_version} could not score the held-out data" if champion_version else "first model"
        return GateDecision(True, f"{first}: {metric} {ours:.4f} passes the thresholds")
    theirs = champion[metric]
    gain = ours - theirs if greater_is_better(metric) else theirs - ours
    if gain >= gate.min_improvement and gain > 0:
        return GateDecision(True, f"{metric} {ours:.4f} beats champion {theirs:.4f} by {gain:+.4f} (margin {gate.min_improvement})")
    return GateDecision(
        False, f"{metric} {ours:.4f} does not beat champion {theirs:.4f} by the margin {gate.min_improvement} (gain {gain:+.4f})"
    )
