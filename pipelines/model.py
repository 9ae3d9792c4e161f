"""Step: the registered versions of the model, and moving the champion back.

lakeloop model list [--json]                     python -m pipelines.model list
lakeloop model rollback [--json]                 python -m pipelines.model rollback
lakeloop model shadow VERSION                    the online candidate, scored beside the champion
lakeloop model canary VERSION [--percent P]      the online candidate, answering P% of requests
lakeloop model retire                            no online candidate
"""

from __future__ import annotations

import argparse

from pipelines.core.config import LakeloopConfig
from pipelines.step_runner import StepResult, add_actions, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    made = add_actions(
        parser,
        {
            "list": "registered versions with aliases, gate verdicts, health, test metrics and the live comparison",
            "rollback": "move the champion alias back to the previous version",
            "shadow": "make VERSION the online candidate: replicas score it beside the champion, which answers",
            "canary": "make VERSION the online candidate, answering --percent of requests",
            "retire": "remove the online candidate",
        },
    )
    for action in ("shadow", "canary"):
        made[action].add_argument("version", help="a registered version of the model")
    made["canary"].add_argument(
        "--percent", type=float, default=None, help="share of requests it answers (default gate.online.canary_percent)"
    )


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters.registry import CHAMPION, DEGRADED, registry_call

    if args.action == "rollback":
        bad, good = registry_call(config, lambda r: r.rollback())
        return StepResult(
            f"champion of {config.mlflow.registered_model} rolled back from version {bad} to {good}",
            {"from_version": bad, "to_version": good},
        )
    if args.action in ("shadow", "canary", "retire"):
        return _candidate(args, config)
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
        if row["online"]:
            lines.append(f"{'':>9}online gate ({row['online_mode']}): {row['online']}; {_live(row)}")
    return StepResult("\n".join(lines), {"versions": rows})


def _live(row: dict) -> str:
    """The live comparison the online gate last saw for a version."""
    seen = row["online_evidence"]
    if not seen or not seen.get("pairs"):
        return row["online_reason"] or "no labelled pairs yet"
    return (
        f"{seen['metric']} {seen['candidate']} vs champion v{seen['champion_version']} {seen['champion']} on "
        f"{seen['pairs']} labelled pairs (p better {seen['p_better']:.3g}, p worse {seen['p_worse']:.3g}; "
        f"{seen['looks']} looks); {seen['action']}"
    )


def _candidate(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters.registry import RegistryError, registry_call

    online = config.gate.online
    if args.action == "retire":
        version = registry_call(config, lambda r: r.version_by_alias(online.alias))
        if version is None:
            return StepResult(f"no online candidate (@{online.alias}) is set", {"retired": None})
        registry_call(config, lambda r: r.retire(online.alias, str(version.version), "retired by hand"))
        return StepResult(f"version {version.version} is no longer @{online.alias}", {"retired": str(version.version)})
    percent = args.percent if args.action == "canary" and args.percent is not None else online.canary_percent
    if not 0 < percent < 100:
        raise RegistryError(f"--percent: {percent:g} is not between 0 and 100")
    champion = registry_call(config, lambda r: r.state()).version
    if champion == args.version:
        raise RegistryError(f"version {args.version} is the champion; a candidate must be another version")
    registry_call(config, lambda r: r.client.get_model_version(r.name, args.version))  # names a missing version
    registry_call(
        config, lambda r: r.nominate(online.alias, args.version, args.action, percent, f"set by hand: {args.action}")
    )
    share = f", answering {percent:g}% of requests" if args.action == "canary" else ""
    return StepResult(
        f"version {args.version} is @{online.alias} ({args.action}{share}) beside champion {champion}; replicas pick "
        f"it up within serving.poll_interval_s, and the monitor decides on labelled traffic",
        {"candidate": args.version, "mode": args.action, "canary_percent": percent if args.action == "canary" else 0},
    )


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.model", add_arguments, run, argv)


if __name__ == "__main__":
    main()
