"""Step: the embedded stack on one machine: an `mlflow server` and a Ray head, both on loopback.

    lakeloop stack up      # prints the MLflow and Ray dashboard URLs, records them in <root>/stack.json
    lakeloop stack down    # shuts Serve down, then stops exactly what `stack up` started

Each service runs in a process session of its own. Stopping the stack shuts Serve down through its
REST API first (replicas drain and flush their logs; the HTTP ingress stops), stops each service,
then stops whatever is still left in those sessions (Serve's HAProxy is a grandchild of the Ray
head, re-parented to init when the head exits). Nothing outside those sessions is touched.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from pipelines.core.config import STORAGE_ROOT_ENV, LakeloopConfig
from pipelines.step_runner import StepResult, add_actions, add_serve_config, step_main

JOINS_STACK = False  # this step manages the stack itself


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = add_actions(
        parser,
        {
            "up": "start an mlflow server and a Ray head on loopback; record them in stack.json",
            "down": "shut Serve down and stop exactly what `stack up` started",
        },
    )
    up = actions["up"]
    up.add_argument("--mlflow-port", type=int, default=5000, help="MLflow tracking server port (default: 5000)")
    up.add_argument("--dashboard-port", type=int, default=8265, help="Ray dashboard and Jobs API port (default: 8265)")
    add_serve_config(up, "whose ports must be free for `lakeloop serve`")


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters.local_services import STATE_FILE

    state_path = Path(config.storage.resolve(STATE_FILE))
    return _down(state_path) if args.action == "down" else _up(args, config, state_path)


def _up(args: argparse.Namespace, config: LakeloopConfig, state_path: Path) -> StepResult:
    from pipelines.adapters import local_services, ray_serve

    recorded = local_services.StackState.read(state_path)
    if recorded is not None and recorded.alive():
        raise local_services.StackError(f"a stack is already running ({state_path}); run `lakeloop stack down` first")
    stale = recorded is not None  # recorded, but its processes are gone (a crash or a reboot)
    local_services.require_free_ports(
        {
            args.mlflow_port: "MLflow",
            args.dashboard_port: "Ray dashboard",
            **ray_serve.ingress_ports(ray_serve.load_serve_config(args.serve_config)),
        }
    )
    root = state_path.parent
    _, mlflow_service = local_services.start_mlflow_server(root / "mlflow", args.mlflow_port)
    state = local_services.StackState([mlflow_service], mlflow_url=mlflow_service.url)
    state.write(state_path)
    try:
        _, ray_service, info = local_services.start_ray_head(
            root / "ray",
            args.dashboard_port,
            config.ray.num_cpus,
            env=_job_environment(config, mlflow_service.url, f"http://{local_services.LOOPBACK}:{args.dashboard_port}"),
        )
    except local_services.StackError:
        local_services.stop_pid(mlflow_service.pid)
        state_path.unlink()
        raise
    state = local_services.StackState(
        [mlflow_service, ray_service], info["gcs_address"], ray_service.url, mlflow_service.url
    )
    state.write(state_path)
    summary = "\n".join(
        [
            *(["(a stack recorded earlier was no longer running; replaced)"] if stale else []),
            f"MLflow UI:      {mlflow_service.url}  (pid {mlflow_service.pid})",
            f"Ray dashboard:  {ray_service.url}  (pid {ray_service.pid}; Jobs API and Serve REST API)",
            f"recorded in {state_path}: lakeloop commands run with storage.root {config.storage.root} join this stack",
            "jobs on it inherit MLFLOW_TRACKING_URI and LAKELOOP_STORAGE_ROOT: "
            "ray job submit --runtime-env conf/runtime_env.yaml -- python -m pipelines.train",
            f"for `ray job submit` and `serve`: export RAY_AUTH_MODE=token RAY_ADDRESS={info['gcs_address']} "
            f"MLFLOW_TRACKING_URI={mlflow_service.url} LAKELOOP_STORAGE_ROOT={config.storage.root}",
            "(token auth is on: clients read ~/.ray/auth_token when RAY_AUTH_MODE=token)",
        ]
    )
    return StepResult(
        summary,
        {
            "services": [asdict(s) for s in state.services],
            "gcs_address": info["gcs_address"],
            "state_file": str(state_path),
        },
    )


def _job_environment(config: LakeloopConfig, mlflow_url: str, dashboard_url: str) -> dict[str, str]:
    """What every job on the stack needs and `ray job submit` would not pass (a job does not inherit the
    submitting shell): the head carries it, its workers and so the jobs' drivers inherit it. The
    dashboard is the Jobs and Serve REST API a job itself calls (a release deploys its smoke app)."""
    return {
        "MLFLOW_TRACKING_URI": mlflow_url,
        STORAGE_ROOT_ENV: config.storage.root,
        "RAY_API_SERVER_ADDRESS": dashboard_url,
    }


def _down(state_path: Path) -> StepResult:
    from pipelines.adapters import local_services, ray_serve

    state = local_services.StackState.read(state_path)
    if state is None:
        return StepResult("nothing to stop: no embedded stack recorded", {"stopped": [], "left_over": []})
    notes = []
    if state.dashboard_url and state.alive():
        try:
            ray_serve.shutdown(state.dashboard_url)
        except Exception as exc:  # noqa: BLE001 - an unreachable dashboard must not keep the stack up
            notes.append(f"Serve could not be shut down cleanly ({exc}); its processes are stopped below")
    left_over, stopped = [], []
    for service in reversed(state.services):  # Ray first: its jobs may still talk to MLflow
        if service.running():
            local_services.stop_pid(service.pid)
            stopped.append(service)
        elif not service.gone():  # the pid is somebody else's now: never signal it or its session
            notes.append(f"{service.name}: pid {service.pid} is no longer the process the stack started; left alone")
            continue
        left_over += local_services.stop_session(service.pid)
    state_path.unlink()
    lines = ["stopped " + (", ".join(f"{s.name} (pid {s.pid})" for s in stopped) or "nothing still running"), *notes]
    if left_over:
        lines.append(f"and {len(left_over)} processes they had left behind: " + "; ".join(left_over))
    return StepResult("\n".join(lines), {"stopped": [asdict(s) for s in stopped], "left_over": left_over})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.stack", add_arguments, run, argv, joins_stack=JOINS_STACK)


if __name__ == "__main__":
    main()
