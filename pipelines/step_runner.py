"""What every step shares: the entry invariants, --config/--json flags, joining the running stack,
the summary/JSON output, and error handling.

A step module provides `add_arguments(parser)` and `run(args, config) -> StepResult` and imports its
library inside `run`, so `--help` never pays for torch and the invariants are in place before Ray is
imported. The same pair backs `python -m pipelines.<step>`, the `lakeloop` CLI and `ray job submit`,
so there is one way to run each step.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.core.config import LakeloopConfig, load_config
from pipelines.core.errors import LakeloopError

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace, LakeloopConfig], "StepResult"]

# Read by Ray when a client or cluster starts, so set before any step imports Ray:
ENTRY_DEFAULTS = {
    # Ray 2.59+ clusters require token auth; the token itself comes from ~/.ray/auth_token.
    "RAY_AUTH_MODE": "token",
    # Serve's bundled HAProxy ingress: 1.6x the default proxy's throughput with a lower p99 here
    # (benchmarks/serve_load.py). Set it to 0 to use the Python proxy.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # MLflow draws a progress bar for every artifact download (a model load is ~90 files): in a
    # monitor's or a job's output that buried the one line that said what went wrong.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class _LevelPrefix(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _library_warnings() -> None:
    """Warnings the libraries log (lakeloop.*) reach the user's terminal as `warning: ...` lines."""
    logger = logging.getLogger("lakeloop")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_LevelPrefix())
        handler.setLevel(logging.WARNING)
        logger.addHandler(handler)


def set_entry_invariants() -> None:
    """The environment every entry point runs with, whether `lakeloop X`, `python -m pipelines.X`
    or a Ray job; a value already set wins. With the HAProxy ingress, Serve runs it through a wrapper
    that keeps its stats page and metrics on loopback (Ray 2.60 binds them to every interface)."""
    for name, value in ENTRY_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and "RAY_SERVE_HAPROXY_BINARY_PATH" not in os.environ:
        from pipelines.adapters.ray_serve import loopback_haproxy

        os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = loopback_haproxy()


@dataclass
class StepResult:
    summary: str
    data: dict[str, Any] = field(default_factory=dict)
    exit_code: int = 0


def iso_moment(text: str) -> datetime:
    """An argparse type: an ISO 8601 time (UTC when it names no zone)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="configuration file (default: $LAKELOOP_CONFIG or conf/lakeloop.yaml)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of a summary")
    parser.add_argument("--debug", action="store_true", help="let an unexpected error end in its traceback")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and --json, on the parser that takes the step's options (each action's, if it has actions)."""
    if not parser.get_default("_actions"):
        _common(parser)


def add_serve_config(parser: argparse.ArgumentParser, what: str) -> None:
    """--serve-config: the one Serve config file every command reads (conf/serve.yaml by default)."""
    from pipelines.adapters.ray_serve import DEFAULT_SERVE_CONFIG

    parser.add_argument(
        "--serve-config",
        type=Path,
        default=DEFAULT_SERVE_CONFIG,
        help=f"Serve config file {what} (default: {DEFAULT_SERVE_CONFIG})",
    )


def add_actions(
    parser: argparse.ArgumentParser, actions: dict[str, str], required: bool = True
) -> dict[str, argparse.ArgumentParser]:
    """A step with several modes gets one sub-command per mode (`stack up`, `stack down`), each with
    the common options; returns their parsers, to add each mode's own options. Not `required`: the
    step without a sub-command is its main mode (`monitor` and `monitor report`), with its own options."""
    if required:
        parser.set_defaults(_actions=tuple(actions))
    sub = parser.add_subparsers(dest="action", required=required, metavar="{" + ",".join(actions) + "}")
    made = {}
    for name, about in actions.items():
        made[name] = sub.add_parser(name, help=about, description=about)
        _common(made[name])
    return made


def join_stack(config: LakeloopConfig) -> tuple[LakeloopConfig, str | None]:
    """With RAY_ADDRESS and MLFLOW_TRACKING_URI unset, the stack recorded by `lakeloop stack up` under
    storage.root (if it is running) supplies the Ray cluster, the tracking server and the Jobs API."""
    from pipelines.adapters.local_services import STATE_FILE, StackState

    if os.environ.get("RAY_ADDRESS") or os.environ.get("MLFLOW_TRACKING_URI") or "://" in config.storage.root:
        return config, None
    state = StackState.read(Path(config.storage.root) / STATE_FILE)
    if state is None or not state.alive() or not state.gcs_address:
        return config, None
    joined = config.model_copy(
        update={
            "mlflow": config.mlflow.model_copy(update={"tracking_uri": state.mlflow_url or config.mlflow.tracking_uri}),
            "ray": config.ray.model_copy(
                update={
                    "address": state.gcs_address,
                    "dashboard": config.ray.dashboard
                    if os.environ.get("RAY_API_SERVER_ADDRESS")  # set by the user: it wins, as everywhere
                    else state.dashboard_url or config.ray.dashboard,
                }
            ),
        }
    )
    return (
        joined,
        f"joined the stack in {Path(config.storage.root) / STATE_FILE}: Ray {state.gcs_address}, "
        f"MLflow {joined.mlflow.tracking_uri}",
    )


def _report_unexpected(step: str, exc: BaseException) -> str:
    """One line naming the step and the cause; the traceback goes to a file (readable by this user
    only) that the line names."""
    name = step.removeprefix("lakeloop ").replace(" ", "-")
    path = Path(tempfile.gettempdir()) / f"lakeloop-{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write("".join(traceback.format_exception(exc)))
    cause = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{step} failed: {type(exc).__name__}: {cause} (traceback in {path}; --debug prints it)"


def execute(run: Run, args: argparse.Namespace, joins_stack: bool = True, step: str = "lakeloop") -> int:
    """Run a step; user errors become one clear message per line and a non-zero exit, and so does an
    unexpected error (its traceback goes to a file, or with --debug to the terminal)."""
    set_entry_invariants()
    _library_warnings()
    # With --json, stdout carries only the JSON document; library chatter goes to stderr.
    chatter = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    try:
        with chatter:
            config = load_config(args.config)
            if joins_stack:
                config, joined = join_stack(config)
                if joined:
                    print(joined, file=sys.stderr)
            result = run(args, config)
    except LakeloopError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "errors": str(exc).splitlines()}))
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"error: {step}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False):
            raise
        message = _report_unexpected(step, exc)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "errors": [message]}))
        print(f"error: {message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": result.exit_code == 0, **result.data}, default=str))
    else:
        print(result.summary)
    return result.exit_code


def step_main(
    prog: str, add_arguments: AddArguments, run: Run, argv: list[str] | None = None, joins_stack: bool = True
) -> None:
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    add_common_arguments(parser)
    code = execute(run, parser.parse_args(argv), joins_stack, prog.removeprefix("python -m "))
    if argv is None:  # run as a program, not called from Python
        exit_program(code)
    sys.exit(code)


def exit_program(code: int) -> None:
    """End a step run as a program (`lakeloop ...`, `python -m pipelines.<step>`, a Ray job's entry
    point) without the rest of Python's finalization: tearing down torch, alibi-detect, MLflow and
    Ray's modules took 1.2-1.9 s here after the work was done, and a retraining job is not finished
    for Ray (nor for the monitor that follows it) until its driver exits. What an exit owes is kept,
    in the interpreter's order: other threads are waited for (thread pools, such as MLflow's artifact
    uploaders, finish their work first: threading._shutdown, the first step of finalization), then
    the atexit handlers run (Ray's shutdown, logging's flush, temporary directories' finalizers),
    then both streams are flushed."""
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
