"""The embedded services on one machine: an `mlflow server` and a Ray head (pipelines.adapters.
ray_head), each in its own process session on loopback, and stopping exactly what was started."""

from __future__ import annotations

import contextlib
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

from pipelines.core.config import CONFIG_ENV
from pipelines.core.errors import LakeloopError

LOOPBACK = "127.0.0.1"
STATE_FILE = "stack.json"
# Ray's dashboard agent, which takes every submitted job, always listens here: `ray.init` cannot move
# it. A second Ray cluster on the machine starts, but its agent cannot bind, so its Jobs API answers
# "No available agent to submit job" to every submission (seen in CI).
RAY_JOB_AGENT_PORT = 52365


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
    pid: int  # also its process session id: it was started in a session of its own
    url: str
    log: str
    started: str | None = None  # process_identity(pid) when it started; None in state files from before

    def running(self) -> bool:
        """Whether the recorded process is still this one: alive under its pid with the same boot and
        start time (after a reboot or a crash the pid can belong to somebody else's process)."""
        if not _exists(self.pid):
            return False
        return self.started is None or process_identity(self.pid) == self.started

    def gone(self) -> bool:
        """No process holds the pid at all (what it left behind in its session may still run)."""
        return not _exists(self.pid)


@dataclass
class StackState:
    """What `stack up` started, recorded in <storage.root>/stack.json: every other command joins it."""

    services: list[Service]
    gcs_address: str | None = None  # the Ray cluster's address (RAY_ADDRESS)
    dashboard_url: str | None = None  # Ray dashboard: Jobs API and Serve REST API
    mlflow_url: str | None = None

    @classmethod
    def read(cls, path: Path) -> StackState | None:
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        if isinstance(raw, list):  # written before the addresses were recorded
            return cls([Service(**s) for s in raw])
        return cls(
            [Service(**s) for s in raw["services"]],
            raw.get("gcs_address"),
            raw.get("dashboard_url"),
            raw.get("mlflow_url"),
        )

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "services": [asdict(s) for s in self.services],
                    "gcs_address": self.gcs_address,
                    "dashboard_url": self.dashboard_url,
                    "mlflow_url": self.mlflow_url,
                },
                indent=2,
            )
        )

    def alive(self) -> bool:
        return bool(self.services) and all(s.running() for s in self.services)


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown-boot"


def process_identity(pid: int) -> str | None:
    """`<boot id>:<start time in clock ticks since boot>` of a live process, or None: a pid names one
    process only together with these (pids are reused, and counted anew after a reboot)."""
    fields = _stat_fields(pid)
    return None if fields is None else f"{_boot_id()}:{fields[19]}"  # field 22 of /proc/<pid>/stat: starttime


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm)"


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def session_processes(sid: int) -> list[int]:
    """Every live process in process session `sid` (Linux /proc): what a service started in a
    session of its own left behind, including re-parented grandchildren such as Serve's HAProxy."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
                found.append(int(entry.name))
    return found


def stop_session(sid: int, timeout: float = 20.0) -> list[str]:
    """SIGTERM every process of the session, SIGKILL what is left after `timeout`; returns the
    processes that were still there ("pid command")."""
    survivors = session_processes(sid)
    described = [f"{pid} {_command(pid)[:120]}" for pid in survivors]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in survivors:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while survivors and time.monotonic() < deadline:
            survivors = [pid for pid in survivors if _exists(pid) and (_stat_fields(pid) or ["Z"])[0] != "Z"]
            time.sleep(0.2)
    return described


def port_holder(port: int) -> tuple[int, str] | None:
    """(pid, command) of the process listening on TCP `port` (any address), or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            return int(entry.name), _command(int(entry.name))
    return 0, "an unknown process"


def require_free_ports(ports: dict[int, str]) -> None:
    """One line per port already held: which process holds it, and how to stop it."""
    held = [(port, what, holder) for port, what in ports.items() if (holder := port_holder(port))]
    if held:
        raise StackError(
            "\n".join(
                f"port {port} ({what}) is held by pid {pid} ({command[:100]}); "
                + (
                    f"stop it with `kill {pid}` if it is left over from an earlier run"
                    if pid
                    else "find it with `ss -ltnp`"
                )
                for port, what, (pid, command) in held
            )
        )


def _service_environment() -> dict[str, str]:
    """As if this interpreter's virtualenv were activated: job entrypoints that say `python`
    (e.g. `ray job submit -- python -m pipelines.train`) must find the same packages. The starting
    shell's LAKELOOP_CONFIG stays out: a submitted job reads the configuration its working directory
    carries (conf/lakeloop.yaml) or its own env_vars, never a file of the shell that started the stack."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    inherited = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    env = {**inherited, "PATH": path if path.split(os.pathsep)[0] == bin_dir else bin_dir + os.pathsep + path}
    env.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")  # measured default: see benchmarks/serve_load.py
    return env


def _spawn(
    name: str, command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**_service_environment(), **(env or {})},
            cwd=cwd,
        )


def ray_auth_headers() -> dict[str, str]:
    """Ray 2.59+ clusters started by ray.init require the token it writes to ~/.ray/auth_token."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    token = os.environ.get("RAY_AUTH_TOKEN") or (path.read_text().strip() if path.exists() else "")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


def _wait_healthy(
    process: subprocess.Popen, url: str, name: str, log: Path, timeout: float, headers: dict | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(
                f"{name} exited with code {process.returncode} while starting; see {log}\n{_log_tail(log)}"
            )
        try:
            if httpx.get(url, timeout=1.0, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_pid(process.pid)
    raise StackError(f"{name} did not become healthy at {url} within {timeout:.0f}s; see {log}\n{_log_tail(log)}")


def start_mlflow_server(
    root: Path,
    port: int | None = None,
    timeout: float = 90.0,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
) -> tuple[subprocess.Popen, Service]:
    """A real tracking server on loopback, serving (proxying) its artifact store: by default a SQLite
    backend store and artifacts under `root`; or a database server (postgresql://...) and an object
    store (s3://..., reached with the standard AWS variables)."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    if port_open(port):
        raise StackError(f"port {port} on {LOOPBACK} is already in use; set another MLflow port")
    log = root / "mlflow-server.log"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        artifacts_destination or str(root / "artifacts"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    # MLflow's server-side job runner (8 more processes, 2.8 GB RSS here against 0.57 GB without it;
    # it runs GenAI judges and trace rollups, which lakeloop does not use) stays off.
    process = _spawn("mlflow", command, log, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://{LOOPBACK}:{port}"
    _wait_healthy(process, f"{url}/health", "mlflow server", log, timeout)
    return process, Service("mlflow", process.pid, url, str(log), process_identity(process.pid))


def start_ray_head(
    root: Path,
    dashboard_port: int = 8265,
    num_cpus: int | None = None,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, Service, dict]:
    """A Ray cluster owned by one background process (pipelines.adapters.ray_head), Jobs API on loopback.

    `env` reaches every process of the cluster: Ray's workers, and so the drivers of submitted jobs,
    inherit the head's environment."""
    root.mkdir(parents=True, exist_ok=True)
    if port_open(dashboard_port):
        raise StackError(f"port {dashboard_port} on {LOOPBACK} is already in use (another Ray dashboard?)")
    require_free_ports({RAY_JOB_AGENT_PORT: "Ray's job agent; another Ray cluster on this machine?"})
    address_file = root / "ray-head.json"
    address_file.unlink(missing_ok=True)
    log = root / "ray-head.log"
    command = [
        sys.executable,
        "-m",
        "pipelines.adapters.ray_head",
        "--address-file",
        str(address_file),
        "--dashboard-port",
        str(dashboard_port),
    ] + (["--num-cpus", str(num_cpus)] if num_cpus else [])
    # The head runs in its own directory, not the caller's: Ray puts its processes' working directory on
    # the path of every worker Serve starts, ahead of an application's runtime_env working_dir, so a
    # checkout it was started from shadowed the code a release's smoke app ships (it served the old code).
    process = _spawn("ray", command, log, env, cwd=root)
    deadline = time.monotonic() + timeout
    while not address_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_pid(process.pid)
            raise StackError(f"Ray head did not start; see {log}")
        time.sleep(0.5)
    info = json.loads(address_file.read_text())
    _wait_healthy(process, f"{info['dashboard_url']}/api/version", "Ray dashboard", log, timeout, ray_auth_headers())
    return process, Service("ray", process.pid, info["dashboard_url"], str(log), process_identity(process.pid)), info


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
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        send(signal.SIGKILL)
