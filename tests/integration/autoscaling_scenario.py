"""Run by test_autoscaling in a fresh process: a Ray head started with the fake multi-node
autoscaler (what `ray.cluster_utils.AutoscalingCluster` does, minus its forced stop of every Ray
process on the machine), token auth on. A submission without the token is
refused; a job submitted with it asks for more CPUs than the head has, the autoscaler adds worker
nodes, and removes them once idle. Prints what happened as JSON.

The fake_multi_node example config is missing from Ray's wheels, so the cluster config is built
here. Every process this cluster starts carries its own temp dir in its command line; those, and
only those, are stopped at the end, by pid."""

from __future__ import annotations

import os

# `ray start` turns token auth on; a driver must be in token mode before Ray is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import contextlib
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import ray

from pipelines.adapters.local_services import free_port

HEAD_CPUS = 1
WORKER_CPUS = 1
MAX_WORKERS = 2
MARKER_ENV = "LAKELOOP_TEST_CLUSTER"  # inherited by every process the test cluster starts


def cluster_config(gcs_address: str) -> dict:
    return {
        "cluster_name": "lakeloop-autoscaling-test",
        "max_workers": MAX_WORKERS,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": HEAD_CPUS}, "node_config": {}, "max_workers": 0},
            "cpu_worker": {
                "resources": {"CPU": WORKER_CPUS},
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_WORKERS,
            },
        },
        "head_node_type": "ray.head.default",
        "idle_timeout_minutes": 0.1,  # idle workers go after ~6 s
        "upscaling_speed": 1.0,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def our_pids(marker: str) -> list[int]:
    """Processes of this cluster: the marker is in their command line or (for processes that
    retitle themselves, like ray::DashboardAgent) in the environment they inherited."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if (
                    marker.encode() in (entry / "cmdline").read_bytes()
                    or f"{MARKER_ENV}={marker}".encode() in (entry / "environ").read_bytes()
                ):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def with_descendants(pids: set[int]) -> set[int]:
    """pids and all their children, grandchildren, ...: agents retitle themselves and lose the marker."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, grew = set(pids), True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in found} - found
        found |= children
        grew = bool(children)
    return found


def stop(marker: str, seen: set[int]) -> int:
    """Stop this cluster's processes: those carrying the marker now, and every process seen
    (with its descendants) while the worker nodes were up."""
    pids = sorted(with_descendants(set(our_pids(marker))) | seen)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.5)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


# The job: more 1-CPU tasks at once than the head has CPUs; prints the nodes they ran on.
JOB = (
    "import json, time, ray\n"
    "ray.init(address='auto')\n"  # the job's own cluster (RAY_ADDRESS is set for job drivers)
    "@ray.remote(num_cpus=1)\n"
    "def work():\n"
    "    time.sleep(8)\n"
    "    return ray.get_runtime_context().get_node_id()\n"
    f"tasks = [work.remote() for _ in range({HEAD_CPUS + MAX_WORKERS * WORKER_CPUS})]\n"
    "print('NODES=' + json.dumps(sorted(set(ray.get(tasks)))))\n"
)


def main() -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    temp_dir = tempfile.mkdtemp(prefix="lakeloop-as-")
    port, dashboard_port = free_port(), free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    config_file = Path(temp_dir) / "autoscaling.json"
    config_file.write_text(json.dumps(cluster_config(address)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", MARKER_ENV: temp_dir}
    subprocess.run(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={port}",
            f"--num-cpus={HEAD_CPUS}",
            f"--temp-dir={temp_dir}",
            f"--autoscaling-config={config_file}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        env=env,
        check=True,
        capture_output=True,
    )
    facts: dict = {}
    seen: set[int] = set()
    try:
        ray.init(address=address, logging_level="WARNING")
        facts["nodes_at_start"] = alive_nodes()
        # Token auth is on: a submission without the token is refused before anything runs.
        refused = httpx.post(f"{dashboard}/api/jobs/", json={"entrypoint": "echo should-not-run"}, timeout=30)
        facts["submission_without_token"] = refused.status_code
        client = JobSubmissionClient(dashboard)  # reads the token: RAY_AUTH_MODE=token
        facts["refused_job_listed"] = any("should-not-run" in (j.entrypoint or "") for j in client.list_jobs())
        script = Path(temp_dir) / "job.py"
        script.write_text(JOB)
        started = time.monotonic()
        job = client.submit_job(entrypoint=f"{sys.executable} {script}")
        peak = 1
        while client.get_job_status(job) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            if time.monotonic() - started > 300:
                raise TimeoutError("the job did not finish in 300 s")
            seen |= with_descendants(set(our_pids(temp_dir)))  # worker nodes' processes, while they exist
            peak = max(peak, alive_nodes())
            time.sleep(0.5)
        facts["job_status"] = str(client.get_job_status(job))
        facts["job_seconds"] = round(time.monotonic() - started, 1)
        logs = client.get_job_logs(job)
        facts["task_nodes"] = len(json.loads(logs.split("NODES=")[1].splitlines()[0])) if "NODES=" in logs else 0
        facts["nodes_at_peak"] = peak
        idle_from = time.monotonic()
        while time.monotonic() - idle_from < 120 and alive_nodes() > 1:
            time.sleep(1)
        facts["nodes_after_idle"] = alive_nodes()
        facts["scale_down_seconds"] = round(time.monotonic() - idle_from, 1)
        ray.shutdown()
    finally:
        facts["stopped_processes"] = stop(temp_dir, seen)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
