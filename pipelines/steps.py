"""What every step shares: --config/--json flags, the summary/JSON output, and error handling.

A step module provides `add_arguments(parser)` and `run(args, config) -> StepResult`; the same pair
backs `python -m pipelines.<step>` and the `lakeloop` CLI, so there is one way to run each step.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.config import LakeloopConfig, load_config
from pipelines.errors import LakeloopError

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, LakeloopConfig], "StepResult"]


@dataclass
class StepResult:
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $LAKELOOP_CONFIG or conf/lakeloop.yaml)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary")


def execute(run: Run, args: argparse.Namespace) -> int:
    """Run a step; user errors become one clear message per line and a non-zero exit."""
    # With --json, stdout carries only the JSON document; library chatter goes to stderr.
    chatter = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    try:
        with chatter:
            result = run(args, load_config(args.config))
    except LakeloopError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "errors": str(exc).splitlines()}))
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps({"ok": result.exit_code == 0, **result.data}, default=str))
    else:
        print(result.summary)
    return result.exit_code


def step_main(prog: str, add_arguments: AddArguments, run: Run, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    add_common_arguments(parser)
    sys.exit(execute(run, parser.parse_args(argv)))
