"""The stack's record of what it started: a pid is only the stack's while the process under it has
the same boot and start time, so a recycled pid is never signalled (real processes, no services)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import stack
from pipelines.adapters.local_services import Service, StackState, process_identity, stop_pid


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen]:
    """Somebody else's process that happens to hold a pid the stack once recorded."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    yield process
    stop_pid(process.pid)


def test_a_recorded_process_is_running_only_with_its_own_start_time(bystander: subprocess.Popen) -> None:
    own = Service("mlflow", bystander.pid, "http://127.0.0.1:1", "log", process_identity(bystander.pid))
    recycled = Service("mlflow", bystander.pid, "http://127.0.0.1:1", "log", "another-boot:12345")
    assert own.running() and StackState([own]).alive()
    assert not recycled.running() and not StackState([recycled]).alive()


def test_stack_down_leaves_a_recycled_pid_and_its_session_alone(tmp_path: Path, bystander: subprocess.Popen) -> None:
    state = tmp_path / "stack.json"
    StackState([Service("ray", bystander.pid, "http://127.0.0.1:1", "log", "another-boot:12345")]).write(state)
    result = stack._down(state)
    assert bystander.poll() is None  # still running: not signalled
    assert "no longer the process the stack started" in result.summary and result.data["stopped"] == []
    assert not state.exists()  # the stale record is gone, so `stack up` can start afresh
