"""Step: deploy the Serve application from conf/serve.yaml and print the URL.

    lakeloop serve [--serve-config conf/serve.yaml] [--foreground]

With RAY_ADDRESS (or ray.address) set, the app is deployed onto that cluster and keeps running
after this command exits. Without one, a local cluster is started and the command serves in the
foreground until interrupted.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

import httpx
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from pipelines import runtime
from pipelines.config import LakeloopConfig, resolve_config_path
from pipelines.errors import ConfigError, LakeloopError
from pipelines.steps import StepResult, step_main

DEFAULT_SERVE_CONFIG = Path("conf/serve.yaml")


def load_serve_config(path: Path) -> ServeDeploySchema:
    try:
        return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{path}: Serve config not found") from None
    except Exception as exc:  # noqa: BLE001 - pydantic (v1 or v2) and YAML errors alike
        raise ConfigError(f"{path}: not a valid Serve config: {exc}") from None


def deploy(serve_config: ServeDeploySchema, config_path: Path) -> str:
    """Start Serve's HTTP proxy as configured and run each application; return the base URL."""
    from serve.app import build_deployment

    from pipelines.config import load_config

    http = serve_config.http_options
    serve.start(http_options={"host": http.host, "port": http.port, "request_timeout_s": http.request_timeout_s})
    config = load_config(config_path)
    for app in serve_config.applications:
        serve.run(build_deployment(config).bind(config.model_dump_json()), name=app.name,
                  route_prefix=app.route_prefix, blocking=False)
    return f"http://{http.host}:{http.port}"


def wait_ready(url: str, timeout: float, path: str = "/health") -> bool:
    """True once GET url+path answers 200 (a server that has loaded its model), False at timeout."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--serve-config", type=Path, default=DEFAULT_SERVE_CONFIG)
    parser.add_argument("--ready-timeout", type=float, default=120, help="seconds to wait for a loaded model")


def _serve_until_stopped() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    serve.shutdown()


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    serve_config = load_serve_config(args.serve_config)
    config_path = resolve_config_path(args.config).resolve()
    with runtime.ray_session(config):
        url = deploy(serve_config, config_path)
        ready = wait_ready(url, args.ready_timeout)
        status = "ready" if ready else f"started, but no model loaded within {args.ready_timeout:.0f}s (see GET /health)"
        summary = f"serving {config.mlflow.registered_model}@{config.serving.alias} at {url} ({status}); docs at {url}/docs"
        if not config.ray.address:  # our own local cluster: it lives as long as this process
            print(summary + "\nno RAY_ADDRESS: serving from this process until Ctrl-C or SIGTERM", flush=True)
            _serve_until_stopped()
    if not ready:
        raise LakeloopError(summary)
    return StepResult(summary, {"url": url, "ready": ready})


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.deploy", add_arguments, run, argv)


if __name__ == "__main__":
    main()
