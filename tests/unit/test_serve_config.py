"""conf/serve.yaml is a real Serve config and agrees with the deployment defaults in code."""

from __future__ import annotations

import yaml
from ray.serve.schema import ServeDeploySchema

from serve.app import DEPLOYMENT_OPTIONS
from tests.helpers import ROOT


def test_serve_yaml_is_a_valid_serve_config_matching_the_code() -> None:
    raw = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    app = schema.applications[0]
    assert app.import_path == "serve.app:build_app"
    assert schema.http_options.host == "127.0.0.1"
    deployment = raw["applications"][0]["deployments"][0]
    assert deployment == DEPLOYMENT_OPTIONS


def test_batches_can_fill() -> None:
    """@serve.batch only fills batches when a replica may hold at least max_batch_size requests."""
    from pipelines.config import load_config

    config = load_config(ROOT / "conf" / "lakeloop.yaml")
    assert DEPLOYMENT_OPTIONS["max_ongoing_requests"] >= config.serving.max_batch_size
