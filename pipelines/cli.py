"""The `lakeloop` command: a thin router onto the step modules (each also runs as python -m).

Only the chosen step's module is imported, so `lakeloop data validate` does not pay for torch.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from pipelines.steps import add_common_arguments, execute

# command words -> (module, help, arguments the words stand for)
COMMANDS: dict[tuple[str, ...], tuple[str, str, list[str]]] = {
    ("data", "generate"): ("pipelines.generate", "append synthetic (optionally drifted) demo data to a Delta table", []),
    ("data", "validate"): ("pipelines.validate", "check a Delta table against the dataset config", []),
    ("data", "preprocess"): ("pipelines.preprocess", "split and preprocess a pinned table version on Ray Data", []),
    ("train",): ("pipelines.train", "train (--tune to tune), evaluate, register, gate against the champion", []),
    ("model", "list"): ("pipelines.registry", "registered versions with aliases, gate verdicts and test metrics", []),
    ("model", "rollback"): ("pipelines.registry", "move the champion alias back to the previous version", ["--rollback"]),
    ("serve",): ("pipelines.deploy", "deploy the Serve app (conf/serve.yaml) and print its URL", []),
    ("predict",): ("pipelines.batch_inference", "score a Delta table with the champion into a new Delta table", []),
    ("monitor",): ("pipelines.monitor", "check served traffic for drift; retrain via the Jobs API (--once for cron)", []),
    ("stack", "up"): ("pipelines.stack", "start the embedded Ray head and MLflow server on loopback", []),
    ("stack", "down"): ("pipelines.stack", "stop what `stack up` started", ["--down"]),
    ("demo",): ("pipelines.demo", "run the loop end to end on embedded defaults", []),
}


def _usage() -> str:
    width = max(len(" ".join(path)) for path in COMMANDS)
    lines = ["usage: lakeloop COMMAND [options]   (lakeloop COMMAND --help for a command's options)", "", "commands:"]
    lines += [f"  {' '.join(path):<{width}}  {about}" for path, (_, about, _) in COMMANDS.items()]
    return "\n".join(lines)


def _match(argv: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    for path in sorted(COMMANDS, key=len, reverse=True):
        if tuple(argv[: len(path)]) == path:
            return path, argv[len(path) :]
    return None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    found = _match(argv)
    if found is None:
        print(_usage(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        sys.exit(0 if not argv or argv[0] in ("-h", "--help") else 2)
    path, rest = found
    # Ray 2.59+ clusters require token auth, and Ray reads the mode once, at import: set it before
    # any step (and so Ray) is imported. The token itself comes from ~/.ray/auth_token.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    # Serve's bundled HAProxy ingress: 1.6x the default proxy's throughput with a lower p99 here
    # (benchmarks/serve_load.py); read when Serve starts. Set it to 0 to use the Python proxy.
    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    module_name, about, preset = COMMANDS[path]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog="lakeloop " + " ".join(path), description=about)
    module.add_arguments(parser)
    add_common_arguments(parser)
    sys.exit(execute(module.run, parser.parse_args([*preset, *rest])))


if __name__ == "__main__":
    main()
