"""Every manifest in cluster/ validates against its schema: the Ray cluster launcher YAML against
the installed Ray's ray-schema.json, the KubeRay manifests against KubeRay's CRDs (made strict, as
`kubectl apply --validate=strict` would be, so a misspelt field fails here rather than being
silently pruned by the API server)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from pipelines.rayservice_manifest import MANIFEST, render, serve_config_for_kubernetes
from tests.helpers import ROOT

CRDS = ROOT.parent / "shared" / "kuberay-crds"
KUBERAY = sorted((ROOT / "cluster" / "kuberay").glob("*.yaml"))
CRD_FILES = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}


def strict(schema: dict) -> dict:
    """Forbid unknown fields wherever the CRD lists the fields and does not ask to keep unknown ones."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def crd_schema(kind: str) -> dict:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRDS} (CI provides shared/ beside the checkout)")
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    stored = next(v for v in crd["spec"]["versions"] if v.get("storage"))
    return strict(stored["schema"]["openAPIV3Schema"])


def test_launcher_config_validates_against_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    validate(config, schema)
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert all(types[t]["max_workers"] > types[t]["min_workers"] for t in ("cpu_worker", "gpu_worker"))
    env = (ROOT / "cluster" / "lakeloop_env.sh").read_text()
    assert "RAY_AUTH_MODE=token" in env and all("lakeloop_env.sh" in c for c in config["head_start_ray_commands"])


def validate(instance: dict, schema: dict) -> None:
    """jsonschema.validate without checking the schema itself against its metaschema first (the CRDs'
    schemas are given; that check took most of a minute for RayJob's on a busy machine)."""
    jsonschema.validators.validator_for(schema)(schema).validate(instance)


@pytest.mark.parametrize("path", KUBERAY, ids=[p.name for p in KUBERAY])
def test_kuberay_manifest_validates_against_its_crd(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "ray.io/v1"
    validate(manifest, crd_schema(manifest["kind"]))


def test_a_misspelt_field_fails_validation() -> None:
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    manifest["spec"]["enableInTreeAutoscalling"] = True
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalling"):
        validate(manifest, crd_schema("RayCluster"))


def test_every_cluster_has_token_auth_and_every_kind_is_present() -> None:
    manifests = {yaml.safe_load(p.read_text())["kind"]: yaml.safe_load(p.read_text()) for p in KUBERAY}
    assert set(manifests) == set(CRD_FILES)
    assert manifests["RayCluster"]["spec"]["authOptions"]["mode"] == "token"
    assert manifests["RayCluster"]["spec"]["enableInTreeAutoscaling"] is True
    assert manifests["RayService"]["spec"]["rayClusterConfig"]["authOptions"]["mode"] == "token"
    assert "pipelines.monitor --once" in manifests["RayCronJob"]["spec"]["jobTemplate"]["entrypoint"]
    assert "pipelines.train" in manifests["RayJob"]["spec"]["entrypoint"]


def test_rayservice_serve_config_is_generated_from_conf_serve_yaml() -> None:
    assert MANIFEST.read_text() == render(), "run: python -m pipelines.rayservice_manifest"
    shipped = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())
    embedded = yaml.safe_load(yaml.safe_load(MANIFEST.read_text())["spec"]["serveConfigV2"])
    assert embedded == serve_config_for_kubernetes(shipped)
    assert embedded["applications"][0]["deployments"] == shipped["applications"][0]["deployments"]
    ServeDeploySchema.model_validate(embedded)


def _containers(node: object) -> list[dict]:
    """Every container spec anywhere in a manifest."""
    if isinstance(node, dict):
        found = [node] if "image" in node and "env" in node else []
        return found + [c for value in node.values() for c in _containers(value)]
    if isinstance(node, list):
        return [c for value in node for c in _containers(value)]
    return []


def test_every_cluster_runs_serves_haproxy_through_the_loopback_wrapper() -> None:
    """Ray's own HAProxy config binds stats (8404) and metrics (9101) on every interface with an admin
    socket of mode 666: each way lakeloop starts a cluster points Serve at the wrapper instead."""
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    image_path = next(
        line.split("=", 1)[1]
        for line in dockerfile.splitlines()
        if line.startswith("ENV RAY_SERVE_HAPROXY_BINARY_PATH=")
    )
    assert f"RUN python -m pipelines.loopback_haproxy {Path(image_path).parent}" in dockerfile
    assert Path(image_path).name == "haproxy-loopback"
    serving = 0
    for path in KUBERAY:
        for container in _containers(yaml.safe_load(path.read_text())):
            env = {e["name"]: e.get("value") for e in container["env"]}
            if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
                serving += 1
                assert env.get("RAY_SERVE_HAPROXY_BINARY_PATH") == image_path, path.name
    assert serving >= 2  # the RayCluster's head and the RayService's
    launcher = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    assert any("python -m pipelines.loopback_haproxy ~/.lakeloop" in c for c in launcher["setup_commands"])
    env_sh = (ROOT / "cluster" / "lakeloop_env.sh").read_text()
    assert 'export RAY_SERVE_HAPROXY_BINARY_PATH="$HOME/.lakeloop/haproxy-loopback"' in env_sh
