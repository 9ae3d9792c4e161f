"""The promotion gate: a pure decision on candidate vs champion metrics from the same held-out data."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipelines.core.config import GateConfig
from pipelines.core.metrics import greater_is_better


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def threshold_failures(candidate: dict[str, float], thresholds: dict[str, float]) -> list[str]:
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


def _gain(metric: str, ours: float, theirs: float) -> float:
    return ours - theirs if greater_is_better(metric) else theirs - ours


def decide(
    candidate: dict[str, float],
    champion: dict[str, float] | None,
    gate: GateConfig,
    champion_version: str | None = None,
) -> GateDecision:
    """Champion metrics None: no champion, or one that could not score this data (champion_version set).
    Both models are scored on the same newest rows; when the champion fails the thresholds there
    (it is failing), `gate.when_champion_fails` decides whether beating it is good enough."""
    metric = gate.metric
    ours = candidate.get(metric)
    failures = threshold_failures(candidate, gate.thresholds)
    champion_failures = threshold_failures(champion, gate.thresholds) if champion else []
    if failures:
        lenient = gate.when_champion_fails == "promote_better" and champion_failures
        if lenient and ours is not None and math.isfinite(ours) and math.isfinite(champion.get(metric, math.nan)):
            gain = _gain(metric, ours, champion[metric])
            if gain >= gate.min_improvement and gain > 0:
                return GateDecision(
                    True,
                    (
                        f"champion fails the thresholds on the newest rows ({'; '.join(champion_failures)}); {metric} "
                        f"{ours:.4f} beats its {champion[metric]:.4f} by {gain:+.4f}, so the candidate is promoted "
                        "under "
                        f"gate.when_champion_fails: promote_better although {'; '.join(failures)}"
                    ),
                )
        return GateDecision(
            False,
            "fails absolute thresholds: "
            + "; ".join(failures)
            + (f" (the champion fails them too: {'; '.join(champion_failures)})" if champion_failures else ""),
        )
    if ours is None or not math.isfinite(ours):
        return GateDecision(False, f"candidate has no finite {metric}")
    if champion is None:
        first = f"champion {champion_version} could not score the held-out data" if champion_version else "first model"
        return GateDecision(True, f"{first}: {metric} {ours:.4f} passes the thresholds")
    theirs = champion[metric]
    gain = _gain(metric, ours, theirs)
    failing = f" (the champion fails the thresholds here: {'; '.join(champion_failures)})" if champion_failures else ""
    if gain >= gate.min_improvement and gain > 0:
        return GateDecision(
            True,
            f"{metric} {ours:.4f} beats champion {theirs:.4f} by {gain:+.4f} (margin {gate.min_improvement}){failing}",
        )
    return GateDecision(
        False,
        f"{metric} {ours:.4f} does not beat champion {theirs:.4f} by the margin {gate.min_improvement} "
        f"(gain {gain:+.4f}){failing}",
    )
