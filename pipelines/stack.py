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


def _service_environment() -> dict[str, str]:
    """As if this interpreter's virtualenv were activated: job entrypoints that say `python`
    (e.g. `ray job submit -- python -m pipelines.train`) must find the same packages."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    env = {**os.environ, "PATH": path if path.split(os.pathsep)[0] == bin_dir else bin_dir + os.pathsep + path}
    env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # measured default: see benchmarks/serve_load.py
    return env


def _spawn(name: str, command: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=_service_environment()
        )


def ray_auth_headers() -> dict[str, str]:
    """Ray 2.59+ clusters started by ray.init require the token it writes to ~/.ray/auth_token."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    token = os.environ.get("RAY_AUTH_TOKEN") or (path.read_text().strip() if path.exists() else "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _wait_healthy(
    process: subprocess.Popen, url: str, name: str, log: Path, timeout: float, headers: dict | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise StackError(f"{name} exited with code {process.returncode} while starting; see {log}\n{tail}")
        try:
            if httpx.get(url, timeout=1.0, headers=headers).status_code == 200:
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


def start_ray_head(root: Path, dashboard_port: int = 8265, num_cpus: int | None = None,
                   timeout: float = 120.0) -> tuple[subprocess.Popen, Service, dict]:
    """A Ray cluster owned by one background process (pipelines.ray_head), Jobs API on loopback."""
    root.mkdir(parents=True, exist_ok=True)
    if port_open(dashboard_port):
        raise StackError(f"port {dashboard_port} on {LOOPBACK} is already in use (another Ray dashboard?)")
    address_file = root / "ray-head.json"
    address_file.unlink(missing_ok=True)
    log = root / "ray-head.log"
    command = [sys.executable, "-m", "pipelines.ray_head", "--address-file", str(address_file),
               "--dashboard-port", str(dashboard_port)] + (["--num-cpus", str(num_cpus)] if num_cpus else [])
    process = _spawn("ray", command, log)
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_pid(process.pid)
            raise StackError(f"Ray head did not start; see {log}")
        time.sleep(0.5)
    info = json.loads(address_file.read_text())
    _wait_healthy(process, f"{info['dashboard_url']}/api/version", "Ray dashboard", log, timeout, ray_auth_headers())
    return process, Service("ray", process.pid, info["dashboard_url"], str(log)), info


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
    parser.add_argument("--dashboard-port", type=int, default=8265)


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
    try:
        _, ray_service, info = start_ray_head(root / "ray", args.dashboard_port, config.ray.num_cpus)
    except StackError:
        stop_pid(mlflow_service.pid)
        state.unlink()
        raise
    services = [mlflow_service, ray_service]
    state.write_text(json.dumps([asdict(s) for s in services]))
    summary = "\n".join([
        f"MLflow UI:      {mlflow_service.url}  (pid {mlflow_service.pid})",
        f"Ray dashboard:  {ray_service.url}  (pid {ray_service.pid}; Jobs API for `ray job submit`)",
        "use them from this shell with:",
        f"  export RAY_AUTH_MODE=token RAY_ADDRESS={info['gcs_address']} MLFLOW_TRACKING_URI={mlflow_service.url}"
        f" LAKELOOP_STORAGE_ROOT={config.storage.root}",
        f"  ray job submit --address {ray_service.url} --working-dir . -- python -m pipelines.train",
        "(token auth is on: clients read ~/.ray/auth_token when RAY_AUTH_MODE=token)",
    ])  # fmt: skip
    return StepResult(summary, {"services": [asdict(s) for s in services], "gcs_address": info["gcs_address"]})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.stack", add_arguments, run, argv)


if __name__ == "__main__":
    main()
