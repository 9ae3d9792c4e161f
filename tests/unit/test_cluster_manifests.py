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
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert all(types[t]["max_workers"] > types[t]["min_workers"] for t in ("cpu_worker", "gpu_worker"))
    env = (ROOT / "cluster" / "lakeloop_env.sh").read_text()
    assert "RAY_AUTH_MODE=token" in env and all("lakeloop_env.sh" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize("path", KUBERAY, ids=[p.name for p in KUBERAY])
def test_kuberay_manifest_validates_against_its_crd(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert manifest["apiVersion"] == "ray.io/v1"
    jsonschema.validate(manifest, crd_schema(manifest["kind"]))


def test_a_misspelt_field_fails_validation() -> None:
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / "raycluster.yaml").read_text())
    manifest["spec"]["enableInTreeAutoscalling"] = True
    with pytest.raises(jsonschema.ValidationError, match="enableInTreeAutoscalling"):
        jsonschema.validate(manifest, crd_schema("RayCluster"))


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
