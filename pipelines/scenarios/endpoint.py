"""The endpoint as the demo, the benchmarks and the tests stand it up: the shipped Serve config
(conf/serve.yaml) with a lakeloop configuration, deployed the one way lakeloop deploys (Serve's REST
API, as `lakeloop serve` and `serve deploy` do), plus variants of its application under other names
and routes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.adapters import ray_serve
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "serve.yaml"


def shipped_config(config: LakeloopConfig, api_key: str | None = None, http_port: int | None = None) -> dict:
    return ray_serve.with_lakeloop_config(ray_serve.load_serve_config(SHIPPED), config, api_key, http_port)


def variant(
    config: LakeloopConfig,
    name: str,
    route_prefix: str,
    api_key: str | None = None,
    import_path: str | None = None,
    **deployment_options: Any,
) -> dict:
    """The shipped application under another name and route, with deployment options replaced (and
    optionally another import path: a benchmark's baseline app with the same options)."""
    app = ray_serve.application(shipped_config(config, api_key), name, route_prefix, **deployment_options)
    if import_path:
        app["import_path"] = import_path
    return app


def deploy(
    config: LakeloopConfig, dashboard: str, port: int, *apps: dict, api_key: str | None = None, main: bool = True
) -> str:
    """The shipped application (unless not `main`) and `apps`, on `port`; returns the HTTP base URL."""
    serve_config = shipped_config(config, api_key, http_port=port)
    serve_config["applications"] = [*(serve_config["applications"] if main else []), *apps]
    return ray_serve.deploy(serve_config, dashboard)


@contextmanager
def serving(config: LakeloopConfig, dashboard: str, port: int, ready_timeout_s: float = 120) -> Iterator[str]:
    """The shipped application, once it answers /health, until the block ends (then Serve shuts down)."""
    url = deploy(config, dashboard, port)
    try:
        if not ray_serve.wait_ready(url, ready_timeout_s):
            raise LakeloopError(f"the endpoint at {url} did not load the champion within {ready_timeout_s:.0f} s")
        yield url
    finally:
        ray_serve.shutdown(dashboard)
