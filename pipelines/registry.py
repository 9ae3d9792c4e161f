"""The MLflow model registry: champion/previous/challenger aliases, promotion, rollback, listing.

    lakeloop model list | lakeloop model rollback

Promotion is compare-and-set: a candidate first claims the succession of the champion it was
compared against by creating a uniquely named registered model (`<name>.succession.<version>`).
The tracking server's database makes that creation atomic, so when two trainings finish at once
only one can replace a given champion; the other stays a challenger and says why.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pipelines.config import LakeloopConfig
from pipelines.errors import LakeloopError
from pipelines.gate import GateDecision
from pipelines.steps import StepResult, step_main

CHAMPION, PREVIOUS, CHALLENGER = "champion", "previous", "challenger"
SUCCESSION = ".succession."


class RegistryError(LakeloopError):
    """The registry is unreachable or not in the state an operation needs."""


def _not_found(exc: MlflowException) -> bool:
    return exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


@dataclass
class Registry:
    client: MlflowClient
    name: str

    @classmethod
    def from_config(cls, config: LakeloopConfig) -> Registry:
        return cls(MlflowClient(config.mlflow.tracking_uri), config.mlflow.registered_model)

    def version_by_alias(self, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            if _not_found(exc):
                return None
            raise

    def champion(self) -> ModelVersion | None:
        return self.version_by_alias(CHAMPION)

    def _claim_succession(self, compared_against: str | None, candidate: str) -> bool:
        try:
            self.client.create_registered_model(
                f"{self.name}{SUCCESSION}{compared_against or 'none'}",
                tags={"lakeloop.successor": candidate},
                description=f"promotion lock: version {candidate} replaced {compared_against or 'no champion'}",
            )
            return True
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                return False
            raise

    def record(self, version: str, decision: GateDecision) -> None:
        self.client.set_model_version_tag(self.name, version, "lakeloop.gate", "promoted" if decision.promote else "refused")
        self.client.set_model_version_tag(self.name, version, "lakeloop.gate_reason", decision.reason)

    def promote(self, version: str, compared_against: str | None, decision: GateDecision) -> GateDecision:
        """Apply a gate decision; refuse if the champion moved since the comparison."""
        if decision.promote:
            current = self.champion()
            current_version = current.version if current else None
            if current_version != compared_against:
                decision = GateDecision(
                    False, f"champion moved from {compared_against} to {current_version} during evaluation; not promoted"
                )
            elif not self._claim_succession(compared_against, version):
                decision = GateDecision(
                    False, f"another training already replaced champion {compared_against}; not promoted"
                )
        self.record(version, decision)
        if decision.promote:
            if compared_against:
                self.client.set_registered_model_alias(self.name, PREVIOUS, compared_against)
            self.client.set_registered_model_alias(self.name, CHAMPION, version)
        else:
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return decision

    def rollback(self) -> tuple[str, str]:
        current, previous = self.champion(), self.version_by_alias(PREVIOUS)
        if current is None:
            raise RegistryError(f"model '{self.name}' has no champion to roll back")
        if previous is None:
            raise RegistryError(f"model '{self.name}' has no 'previous' version to roll back to")
        self.client.set_registered_model_alias(self.name, CHAMPION, previous.version)
        self.client.delete_registered_model_alias(self.name, PREVIOUS)
        self.client.set_model_version_tag(self.name, current.version, "lakeloop.rolled_back", "true")
        return current.version, previous.version

    def versions(self) -> list[dict]:
        try:
            aliases = self.client.get_registered_model(self.name).aliases
        except MlflowException as exc:
            if _not_found(exc):
                return []
            raise
        rows = []
        for mv in self.client.search_model_versions(f"name = '{self.name}'"):
            run = self.client.get_run(mv.run_id) if mv.run_id else None
            test_metrics = {k: round(v, 4) for k, v in (run.data.metrics if run else {}).items() if k.startswith("test_")}
            rows.append(
                {
                    "version": mv.version,
                    "aliases": sorted(a for a, v in aliases.items() if str(v) == str(mv.version)),
                    "gate": mv.tags.get("lakeloop.gate", ""),
                    "reason": mv.tags.get("lakeloop.gate_reason", ""),
                    "run_id": mv.run_id,
                    "metrics": test_metrics,
                }
            )
        return sorted(rows, key=lambda r: int(r["version"]))


def _registry_call(fn, config: LakeloopConfig):
    try:
        return fn(Registry.from_config(config))
    except MlflowException as exc:
        raise RegistryError(f"MLflow at {config.mlflow.tracking_uri}: {exc.message}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rollback", action="store_true", help="move 'champion' back to the 'previous' version")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    if args.rollback:
        bad, good = _registry_call(lambda r: r.rollback(), config)
        return StepResult(f"champion of {config.mlflow.registered_model} rolled back from version {bad} to {good}",
                          {"from_version": bad, "to_version": good})
    rows = _registry_call(lambda r: r.versions(), config)
    if not rows:
        return StepResult(f"no versions of {config.mlflow.registered_model} registered yet", {"versions": []})
    lines = [f"{'version':>7}  {'aliases':<22} {'gate':<9} metrics"]
    for row in rows:
        shown = " ".join(f"{k}={v}" for k, v in row["metrics"].items())
        lines.append(f"{row['version']:>7}  {','.join(row['aliases']):<22} {row['gate']:<9} {shown}")
    return StepResult("\n".join(lines), {"versions": rows})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.registry", add_arguments, run, argv)


if __name__ == "__main__":
    main()
