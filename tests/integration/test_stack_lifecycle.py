"""`lakeloop stack up / serve / stack down`, twice, as a user runs them: nothing of the first cycle is
left when the second starts (Serve's HAProxy ingress used to outlive the Ray head and hold ports
8000, 8404 and 9101), and a port held by someone else is named in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipelines.adapters.local_services import STATE_FILE, StackState, free_port, port_holder
from pipelines.scenarios import synthetic
from tests.helpers import ROOT, alive, demo_raw_config, lakeloop, stack_processes, user_environment

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.own_cluster]

SERVE_PORTS = (8000, 8404, 9101)  # conf/serve.yaml's HTTP port; HAProxy's stats page and metrics


@pytest.fixture
def user_env(tmp_path: Path) -> dict:
    raw = demo_raw_config(tmp_path / "data")
    raw["train"].update(max_epochs=2)
    return user_environment(raw, tmp_path)


def listen_addresses(port: int) -> set[str]:
    """The addresses a TCP port listens on, from /proc/net/tcp{,6} (state 0A is LISTEN): what `ss -ltn` shows."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntop(socket.AF_INET if len(address) == 8 else socket.AF_INET6, _unhex(address)))
    return found


def _unhex(address: str) -> bytes:
    """/proc/net/tcp writes each 32-bit word of the address in host (little-endian) order."""
    raw = bytes.fromhex(address)
    return b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))


def cycle(env: dict, train: bool) -> set[int]:
    ports = ["--mlflow-port", str(free_port()), "--dashboard-port", str(free_port())]
    up = lakeloop("stack", "up", *ports, env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        started = use_stack(env, train)
    finally:
        down = lakeloop("stack", "down", "--json", env=env)  # also when an assertion failed
    assert down.returncode == 0, down.stderr[-3000:]
    return started


def use_stack(env: dict, train: bool) -> set[int]:
    if train:
        assert lakeloop("data", "generate", "--rows", "2000", env=env).returncode == 0
        trained = lakeloop("train", env=env)
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "joined the stack" in trained.stderr  # no RAY_ADDRESS or MLFLOW_TRACKING_URI: it found stack.json
        assert submitted_status(env)["champion"].get("version") is not None, "the job did not reach the stack's MLflow"
    served = lakeloop("serve", env=env)
    assert served.returncode == 0, served.stderr[-3000:]
    assert "http://127.0.0.1:8000" in served.stdout and "(ready)" in served.stdout
    record = synthetic.EXAMPLE_ROW
    for _ in range(20):
        assert httpx.post("http://127.0.0.1:8000/predict", json={"records": [record]}, timeout=30).status_code == 200
    status = lakeloop("status", "--json", env=env)
    assert status.returncode == 0, status.stderr[-3000:]
    shown = json.loads(status.stdout)
    assert shown["stack"]["running"] and shown["serving"]["version"] == shown["champion"]["version"] is not None
    assert any(t["table"].endswith("/events") and t["version"] >= 0 for t in shown["tables"])
    started = stack_processes(Path(env["LAKELOOP_STORAGE_ROOT"]))
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid in started if alive(pid)]
    assert not [c for c in commands if b"mlflow.server.jobs" in c or b"huey" in c]  # MLflow's job runner is off
    holders = {port: port_holder(port) for port in SERVE_PORTS}
    assert all(holder and holder[0] in started for holder in holders.values()), holders  # the stack's own ingress
    bound = {port: listen_addresses(port) for port in SERVE_PORTS}
    assert all(addresses == {"127.0.0.1"} for addresses in bound.values()), bound  # HAProxy's too (issue 17)
    return started


def submitted_status(env: dict) -> dict:
    """`lakeloop status` as a job submitted with conf/runtime_env.yaml from a shell without
    MLFLOW_TRACKING_URI: the job finds the stack's MLflow (on a port other than the config's) only
    because it inherits the variable from the stack's Ray head."""
    state = StackState.read(Path(env["LAKELOOP_STORAGE_ROOT"]) / STATE_FILE)
    assert state is not None and "MLFLOW_TRACKING_URI" not in env
    job = subprocess.run(
        ["ray", "job", "submit", "--address", state.dashboard_url, "--runtime-env", "conf/runtime_env.yaml"]
        + ["--", "python", "-m", "pipelines.status", "--json"],
        cwd=ROOT,
        env={**env, "RAY_AUTH_MODE": "token", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
    shown = json.loads(next(line for line in job.stdout.splitlines() if line.startswith('{"ok"')))
    assert shown["stack"]["mlflow"] == state.mlflow_url
    return shown


def test_two_stack_cycles_leave_nothing_behind(user_env: dict) -> None:
    for first in (True, False):
        started = cycle(user_env, train=first)
        assert not [pid for pid in started if alive(pid)], "processes of the stack survived `stack down`"
        assert all(port_holder(port) is None for port in SERVE_PORTS)
        assert not (Path(user_env["LAKELOOP_STORAGE_ROOT"]) / STATE_FILE).exists()


def test_a_held_port_is_named_in_one_line(user_env: dict) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 8404))
        squatter.listen()
        up = lakeloop(
            "stack",
            "up",
            "--mlflow-port",
            str(free_port()),
            "--dashboard-port",
            str(free_port()),
            "--json",
            env=user_env,
        )
    assert up.returncode == 1
    errors = json.loads(up.stdout)["errors"]
    assert len(errors) == 1 and errors[0].startswith(f"port 8404 (Serve HAProxy stats) is held by pid {os.getpid()} (")
    assert f"kill {os.getpid()}" in errors[0] and "Traceback" not in up.stderr
    assert not (Path(user_env["LAKELOOP_STORAGE_ROOT"]) / STATE_FILE).exists()  # nothing was started
