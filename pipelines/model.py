"""Step: the registered versions of the model, and moving the champion back.

lakeloop model list [--json]        python -m pipelines.model list
lakeloop model rollback [--json]    python -m pipelines.model rollback
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, add_actions, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_actions(
        parser,
        {
            "list": "registered versions with aliases, gate verdicts, health and test metrics",
            "rollback": "move the champion alias back to the previous version",
        },
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters.registry import CHAMPION, DEGRADED, registry_call

    if args.action == "rollback":
        bad, good = registry_call(config, lambda r: r.rollback())
        return StepResult(
            f"champion of {config.mlflow.registered_model} rolled back from version {bad} to {good}",
            {"from_version": bad, "to_version": good},
        )
    rows = registry_call(config, lambda r: r.versions())
    if not rows:
        return StepResult(f"no versions of {config.mlflow.registered_model} registered yet", {"versions": []})
    lines = [f"{'version':>7}  {'aliases':<22} {'gate':<9} {'trigger':<8} {'code':<16}  metrics"]
    for row in rows:
        shown = " ".join(f"{k}={v}" for k, v in row["metrics"].items())
        lines.append(
            f"{row['version']:>7}  {','.join(row['aliases']):<22} {row['gate']:<9} {row['trigger'] or '-':<8} "
            f"{row['fingerprint'] or '-':<16}  {shown}"
        )
        if row["health"] == DEGRADED and CHAMPION in row["aliases"]:
            lines.append(f"{'':>9}DEGRADED: {row['health_reason']}")
    return StepResult("\n".join(lines), {"versions": rows})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.model", add_arguments, run, argv)


if __name__ == "__main__":
    main()
