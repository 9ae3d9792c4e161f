"""The embedded stack on one machine: an `mlflow server` and a Ray head, both on loopback.

    lakeloop stack up      # prints the MLflow and Ray dashboard URLs, records pids in <root>/stack.json
    lakeloop stack down    # stops exactly the processes `stack up` started, by pid

Each service runs in its own process session so that stopping it never touches other processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from pipelines.config import LakeloopConfig
from pipelines.errors import LakeloopError
from pipelines.steps import StepResult, step_main

LOOPBACK = "127.0.0.1"
STATE_FILE = "stack.json"


class StackError(LakeloopError):
    """An embedded service failed to start or stop."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass
class Service:
    name: str
    pid: int
    url: str
    log: str


def _spawn(name: str, command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )


def _wait_healthy(process: subprocess.Popen, url: str, name: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{name} exited with code {process.returncode} while starting; see {log}\n{tail}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_pid(process.pid)
    raise StackError(f"{name} did not become healthy at {url} within {timeout:.0f}s; see {log}")


def start_mlflow_server(root: Path, port: int | None = None, timeout: float = 90.0) -> tuple[subprocess.Popen, Service]:
    """A real tracking server: SQLite backend store, proxied local artifact store, loopback only."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port_open(port):
        raise StackError(f"port {port} on {LOOPBACK} is already in use; set another MLflow port")
    log = root / "mlflow-server.log"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--host", LOOPBACK, "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    process = _spawn("mlflow", command, log)
    url = f"http://{LOOPBACK}:{port}"
    _wait_healthy(process, f"{url}/health", "mlflow server", log, timeout)
    return process, Service("mlflow", process.pid, url, str(log))


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return
    if group != pid:  # not a session leader we created: only signal the process itself
        group = None
    send = (lambda sig: os.killpg(group, sig)) if group else (lambda sig: os.kill(pid, sig))
    try:
        send(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        send(signal.SIGKILL)
    except ProcessLookupError:
        pass


def _state_path(config: LakeloopConfig) -> Path:
    return Path(config.storage.table_uri(STATE_FILE))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--down", action="store_true", help="stop the services a previous `stack up` started")
    parser.add_argument("--mlflow-port", type=int, default=5000)


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    state = _state_path(config)
    if args.down:
        if not state.exists():
            return StepResult("nothing to stop: no embedded stack recorded", {"stopped": []})
        services = [Service(**s) for s in json.loads(state.read_text())]
        for service in services:
            stop_pid(service.pid)
        state.unlink()
        return StepResult("stopped " + ", ".join(f"{s.name} (pid {s.pid})" for s in services), {"stopped": [asdict(s) for s in services]})
    if state.exists():
        raise StackError(f"a stack is already recorded in {state}; run `lakeloop stack down` first")
    root = state.parent
    _, mlflow_service = start_mlflow_server(root / "mlflow", args.mlflow_port)
    state.write_text(json.dumps([asdict(mlflow_service)]))
    return StepResult(f"MLflow UI: {mlflow_service.url}  (pid {mlflow_service.pid}, log {mlflow_service.log})",
                      {"services": [asdict(mlflow_service)]})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.stack", add_arguments, run, argv)


if __name__ == "__main__":
    main()
