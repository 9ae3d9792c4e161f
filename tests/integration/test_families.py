"""Every family through the whole path: a user's torch module and a user's scikit-learn-API estimator
(tests/user_families.py, the worked examples of docs/families.md) and the built-in mlp and xgboost
train on the shared Ray cluster, register in a real MLflow server, pass the gate, and answer the same
probabilities from the pyfunc, Ray Serve, `mlflow models serve` and the batch API. The user's module
reaches Serve's replicas and `mlflow models serve` with the model (logged as MLflow code), not through
an installed package."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import ray.data
from mlflow import MlflowClient

from pipelines.adapters import delta, ray_serve
from pipelines.adapters.local_services import free_port, stop_pid
from pipelines.adapters.registry import Registry, release_downloads
from pipelines.core.config import parse_config
from pipelines.inference.scoring import predict, release_pools
from pipelines.scenarios import endpoint, synthetic
from pipelines.training.workflow import train_and_register
from tests.helpers import demo_raw_config, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAMILIES = {
    "residual": {
        "kind": "torch",
        "class_path": "tests.user_families:ResidualNet",
        "params": {"width": 32, "lr": 0.003},
    },
    "naive_bayes": {"kind": "sklearn", "class_path": "tests.user_families:GaussianNaiveBayes", "params": {}},
    "mlp": {"params": {"hidden": 32}},
    "xgboost": {"params": {"max_rounds": 100}},
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, ray_local: None
):
    family = request.param
    raw = demo_raw_config(tmp_path_factory.mktemp(family) / "data")
    raw["mlflow"].update(tracking_uri=mlflow_server, registered_model=f"family-{family}-{uuid.uuid4().hex[:6]}")
    raw["train"].update(family=family, max_epochs=3, families={family: FAMILIES[family]})
    config = parse_config(raw)
    delta.tables(config).events.append(synthetic.generate(2000, 3))
    outcome = train_and_register(config)
    return config, outcome


@pytest.fixture
def frame(trained) -> pd.DataFrame:
    """Feature columns as a user reads them: DeltaTable(...).to_pandas()."""
    config, _ = trained
    return delta.tables(config).events.open().to_pandas().head(30)[config.dataset.feature_names]


@pytest.fixture
def models_serve(trained) -> Iterator[str]:
    """`mlflow models serve` of the registered version, run from a directory where the user's module
    is not importable."""
    config, outcome = trained
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": config.mlflow.tracking_uri}
    env.pop("PYTHONPATH", None)  # the user's module comes with the model (MLflow code_paths), not from here
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    uri = f"models:/{config.mlflow.registered_model}/{outcome.model_version}"
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "-h", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(
        [*command, "--env-manager", "local"],
        env=env,
        cwd=tempfile.gettempdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        up = wait_for(lambda: httpx.get(f"{url}/ping").status_code == 200, 120, ignore=(httpx.HTTPError,))
        assert up, process.stderr.read().decode()[-2000:] if process.poll() is not None else "not up in 120 s"
        yield url
    finally:
        stop_pid(process.pid)


def _probabilities(predictions: list[dict] | pd.DataFrame) -> np.ndarray:
    frame = pd.DataFrame(predictions)
    return frame[[c for c in frame.columns if c.startswith("probability_")]].to_numpy(np.float64)


def test_the_family_trains_on_ray_train_and_passes_the_gate(trained) -> None:
    config, outcome = trained
    family = config.train.family
    assert outcome.family == family and outcome.promoted, outcome.reason
    # the demo rule's Bayes-optimal ROC AUC is about 0.93; a constant scores 0.5
    assert outcome.metrics["roc_auc"] > 0.8
    version = MlflowClient(config.mlflow.tracking_uri).get_model_version(
        config.mlflow.registered_model, outcome.model_version
    )
    assert version.tags["lakeloop.family"] == family


def test_a_lakeloop_process_downloads_the_model_without_its_own_package(trained, frame: pd.DataFrame) -> None:
    """The model's copy of `pipelines` is never read by a process that imported lakeloop; the
    user's module is still downloaded with the model."""
    config, outcome = trained
    registry = Registry.from_config(config)
    code = registry.download_model(outcome.model_version) / "code"
    user_module = FAMILIES[config.train.family].get("class_path", "").split(":")[0]
    expected = {user_module.split(".")[0]} if user_module else set()
    downloaded = {p.name for p in code.iterdir()} if code.exists() else set()
    shutil.rmtree(code.parent)
    assert downloaded == expected
    assert len(registry.load_version(outcome.model_version).predict_frame(frame.head(3))) == 3


def test_a_loaded_models_directory_goes_with_the_predictor(
    trained, frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica that swaps models keeps no folder of the versions it no longer serves; one that
    Serve stops removes the rest as it closes."""
    config, outcome = trained
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    registry = Registry.from_config(config)
    predictor = registry.load_version(outcome.model_version)
    assert len(list(tmp_path.glob("lakeloop-model-*"))) == 1  # kept while the predictor lives
    assert len(predictor.predict_frame(frame.head(3))) == 3
    del predictor
    gc.collect()
    assert not list(tmp_path.glob("lakeloop-model-*"))
    held = registry.load_version(outcome.model_version)
    release_downloads()
    assert not list(tmp_path.glob("lakeloop-model-*"))
    assert len(held.predict_frame(frame.head(3))) == 3  # the model itself stays loaded


def test_pyfunc_serve_mlflow_models_serve_and_batch_agree(
    trained, frame: pd.DataFrame, models_serve: str, ray_local: str
) -> None:
    config, outcome = trained
    uri = f"models:/{config.mlflow.registered_model}/{outcome.model_version}"
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    expected = _probabilities(mlflow.pyfunc.load_model(uri).predict(frame))
    assert expected.shape == (len(frame), 2) and np.allclose(expected.sum(axis=1), 1.0)
    assert expected[:, 1].std() > 0.01  # the model tells rows apart
    body = {"dataframe_records": frame.astype(object).where(frame.notna(), None).to_dict(orient="records")}
    served_elsewhere = httpx.post(f"{models_serve}/invocations", json=body, timeout=60).json()["predictions"]
    assert np.allclose(_probabilities(served_elsewhere), expected, atol=1e-6)
    app = endpoint.variant(config, "families", "/families")  # replicas import the module the model carries
    url = endpoint.deploy(config, ray_local, free_port(), app, main=False)
    try:
        assert ray_serve.wait_ready(f"{url}/families", 120)
        served = httpx.post(f"{url}/families/invocations", json=body, timeout=60).json()["predictions"]
    finally:
        ray_serve.shutdown(ray_local)
    assert np.allclose(_probabilities(served), expected, atol=1e-6)
    scored = predict(frame, model=uri, config=config).to_pandas()  # a small frame: scored in the driver
    assert np.allclose(_probabilities(scored), expected, atol=1e-6)
    pooled = predict(ray.data.from_pandas(frame), model=uri, config=config).to_pandas()  # the actor pool
    try:
        assert np.allclose(_probabilities(pooled), expected, atol=1e-6)
    finally:
        release_pools()
