"""conf/serve.yaml is a real Serve config, and what `lakeloop serve` sends is that file plus the app's
arguments: nothing else is added in code."""

from __future__ import annotations

import yaml
from ray.serve.schema import ServeDeploySchema

from pipelines.adapters.ray_serve import api_key_digest, load_serve_config, with_lakeloop_config
from pipelines.core.config import load_config, parse_config_text
from tests.helpers import ROOT

SERVE_YAML = ROOT / "conf" / "serve.yaml"


def test_serve_yaml_is_a_valid_serve_config_on_loopback() -> None:
    schema = ServeDeploySchema.model_validate(yaml.safe_load(SERVE_YAML.read_text()))
    assert schema.applications[0].import_path == "serve.app:build_app"
    assert schema.http_options.host == "127.0.0.1"


def test_what_lakeloop_serve_sends_is_the_file_with_the_configuration_as_the_app_arguments() -> None:
    config = load_config(ROOT / "conf" / "lakeloop.yaml")
    raw = load_serve_config(SERVE_YAML)
    sent = with_lakeloop_config(raw, config, api_key="k3y", http_port=8123)
    app, original = sent["applications"][0], raw["applications"][0]
    assert app["deployments"] == original["deployments"]  # replicas, CPUs, limits: as written in the file
    assert {k: v for k, v in app.items() if k != "args"} == {k: v for k, v in original.items() if k != "args"}
    assert parse_config_text(app["args"]["config_yaml"], "sent") == config
    assert app["args"]["api_key_sha256"] == api_key_digest("k3y") and "k3y" not in yaml.safe_dump(sent)
    assert sent["http_options"]["port"] == 8123 and raw["http_options"]["port"] == 8000


def test_batches_can_fill() -> None:
    """@serve.batch only fills batches when a replica may hold at least max_batch_size requests."""
    config = load_config(ROOT / "conf" / "lakeloop.yaml")
    deployment = load_serve_config(SERVE_YAML)["applications"][0]["deployments"][0]
    assert deployment["max_ongoing_requests"] >= config.serving.max_batch_size
