"""Step: deploy the Serve application conf/serve.yaml describes, and print its URL.

    lakeloop serve [--serve-config conf/serve.yaml]

It sends the file's contents to Serve's REST API on the Ray dashboard, as `serve deploy` does, with
the application's arguments set to this exact lakeloop configuration (and the API key's SHA-256
when LAKELOOP_API_KEY is set). On a cluster (the running `lakeloop stack`, found from stack.json, or
RAY_ADDRESS with ray.dashboard) the app keeps running after this command exits. Without one, a
private local cluster is started and the command serves in the foreground until Ctrl-C or SIGTERM,
then shuts Serve and the cluster down.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.step_runner import StepResult, add_serve_config, step_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_serve_config(parser, "to deploy")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120,
        help="seconds to wait for a replica to load the model (default: 120)",
    )


def _wait_for_signal() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from pipelines.adapters import ray_cluster, ray_serve

    serve_config = ray_serve.with_lakeloop_config(
        ray_serve.load_serve_config(args.serve_config),
        config,
        ray_serve.api_key_from_env(),
        feedback_key=ray_serve.api_key_from_env(ray_serve.FEEDBACK_KEY_ENV),
    )
    if config.ray.address:  # a cluster: deploy through its dashboard, and leave it serving
        return _deploy(serve_config, config, config.ray.dashboard, args.ready_timeout, config.ray.address)
    with ray_cluster.ray_session(config) as dashboard:  # a private cluster, living as long as this process
        result = _deploy(serve_config, config, dashboard, args.ready_timeout, "a private local cluster")
        print(
            result.summary + "\nno cluster to deploy onto (no running stack, no RAY_ADDRESS): serving from this "
            "process until Ctrl-C or SIGTERM",
            flush=True,
        )
        _wait_for_signal()
        ray_serve.shutdown(dashboard)  # replicas drain and flush their logs; the ingress stops
    return result


def _deploy(serve_config: dict, config: LakeloopConfig, dashboard: str, ready_timeout: float, where: str) -> StepResult:
    from pipelines.adapters import local_services, ray_serve

    if not ray_serve.running(dashboard):  # a Serve of our own would hold these ports; a leftover must not
        local_services.require_free_ports(ray_serve.ingress_ports(serve_config))
    url = ray_serve.deploy(serve_config, dashboard)
    ready = ray_serve.wait_ready(url, ready_timeout)
    status = "ready" if ready else f"deployed, but no model loaded within {ready_timeout:.0f}s (see GET /health)"
    summary = (
        f"serving {config.mlflow.registered_model}@{config.serving.alias} at {url} ({status}); docs at "
        f"{url}/docs; on {where} (dashboard {dashboard})"
    )
    if not ready:
        raise LakeloopError(summary)
    return StepResult(summary, {"url": url, "ready": ready, "dashboard": dashboard})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.deploy", add_arguments, run, argv)


if __name__ == "__main__":
    main()
