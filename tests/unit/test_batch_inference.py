"""Batch inference's API refuses early, naming the problem, before any Ray or MLflow work."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipelines.adapters.local_services import free_port
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.inference.scoring import predict


def test_an_unreachable_tracking_server_is_named(config: LakeloopConfig) -> None:
    """Without the check, MLflow's own retries took 4 min and then raised its own traceback."""
    dead = f"http://127.0.0.1:{free_port()}"
    config = config.model_copy(update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": dead})})
    with pytest.raises(LakeloopError, match=f"MLflow tracking server {dead} is not reachable"):
        predict(pd.DataFrame({"tenure_months": [1]}), config=config)


def test_a_model_that_is_not_a_registry_uri_is_refused(config: LakeloopConfig) -> None:
    from pipelines.inference.scoring import resolve_model

    with pytest.raises(LakeloopError, match="models:/NAME@ALIAS"):
        resolve_model("runs:/abc/model", config)


def test_a_scoring_actor_scores_arrow_and_pandas_blocks_alike() -> None:
    """A Dataset made with ray.data.from_pandas hands the pool pandas blocks (every pooled call failed
    on them: 'DataFrame' object has no attribute 'num_rows')."""
    import pyarrow as pa

    from pipelines.inference.scoring_actor import ScoringActor
    from pipelines.scenarios.synthetic import EXAMPLE_ROW
    from tests.fakes import FakePredictor

    features = list(EXAMPLE_ROW)
    frame = pd.DataFrame([EXAMPLE_ROW] * 5)
    actor = ScoringActor([FakePredictor("3")], b"", "m", "3", features, threads=1, batch_size=2)
    (from_arrow, _), (from_pandas, described) = actor.score(pa.Table.from_pandas(frame)), actor.score(frame)
    assert from_arrow.equals(from_pandas) and from_pandas.num_rows == 5
    assert from_pandas.column("model_version").to_pylist() == ["3"] * 5
    assert described.num_rows == 5 and described.schema.names == from_pandas.column_names  # no task reads it


def test_a_users_modules_travel_to_the_actors_as_an_archive(tmp_path, monkeypatch) -> None:
    """A family's module file or package directory, zipped by the driver and unpacked by each actor
    onto its sys.path (the driver may hold it only in the model MLflow downloaded on its node)."""
    import tempfile

    from pipelines.inference.scoring_actor import module_archive, unpack_modules
    from tests.helpers import ROOT

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the unpacked folder under pytest's
    package = tmp_path / "my_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text("WIDTH = 3\n")
    single = tmp_path / "my_estimator.py"
    single.write_text("KIND = 'nb'\n")
    directory = unpack_modules(module_archive([str(package), str(single)]))
    assert (Path(directory) / "my_models" / "nets.py").read_text() == "WIDTH = 3\n"
    assert (Path(directory) / "my_estimator.py").read_text() == "KIND = 'nb'\n"
    assert module_archive([]) == b""
    assert "tests/user_families.py" in zipfile.ZipFile(io.BytesIO(module_archive([str(ROOT / "tests")]))).namelist()
