"""The model's two entry points, the pyfunc's frames and the columns Serve and batch inference pass,
for an estimator of every family kind (trained in-process here: the Ray Train paths are in
tests/integration/test_families.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.adapters.registry import _PyfuncPredictor
from pipelines.core.config import parse_config
from pipelines.core.estimators import SklearnEstimator, TorchEstimator, XGBoostEstimator
from pipelines.core.feature_transform import FittedTransform, statistics
from pipelines.core.module_spec import MLP_CLASS, ModuleSpec
from pipelines.scenarios import synthetic
from pipelines.training.code_version import model_code
from pipelines.training.features import FeaturePipeline
from pipelines.training.fitted_model import LakeloopModel
from serve.schemas import RecordValidator
from tests.helpers import ROOT, demo_raw_config


def _estimator(kind: str, pipeline: FeaturePipeline, train: pd.DataFrame):
    matrix = pipeline.transform_frame(train)
    target = pipeline.encode_target(train["churned"])
    if kind == "mlp":
        spec = ModuleSpec(MLP_CLASS, pipeline.onehot_width, 2, {"hidden": 16, "depth": 2, "dropout": 0.0})
        return TorchEstimator("mlp", spec, spec.build().state_dict(), "classification")
    if kind == "xgboost":
        import xgboost

        numeric, slots = pipeline.layout
        data = xgboost.DMatrix(
            matrix, target, feature_types=["q"] * numeric + ["c"] * len(slots), enable_categorical=True
        )
        booster = xgboost.train({"objective": "binary:logistic", "tree_method": "hist", "max_leaves": 15}, data, 20)
        return XGBoostEstimator("xgboost", booster.save_raw("ubj"), "classification", 2)
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(max_iter=200).fit(pipeline.onehot(matrix), target)
    return SklearnEstimator("logistic", fitted, "classification", 2, "onehot")


@pytest.fixture(scope="module", params=["mlp", "xgboost", "sklearn"])
def model(request, tmp_path_factory: pytest.TempPathFactory) -> LakeloopModel:
    dataset = parse_config(demo_raw_config(tmp_path_factory.mktemp("bundle"))).dataset
    train = synthetic.generate(2000, 0).to_pandas()
    pipeline = FeaturePipeline(dataset)
    pipeline.fitted = FittedTransform.fit(
        statistics({n: train[n] for n in dataset.feature_names}, dataset.numeric, dataset.categorical),
        dataset.numeric,
        dataset.categorical,
    )
    return LakeloopModel(pipeline, _estimator(request.param, pipeline, train))


@pytest.fixture(scope="module")
def records(model: LakeloopModel) -> list[dict]:
    """Served rows: a missing value in every feature somewhere, and an unknown plan."""
    frame = synthetic.generate(50, 1).to_pandas()[model.feature_names].astype(object)
    rows = [{k: (None if v is None or v != v else v) for k, v in r.items()} for r in frame.to_dict("records")]
    for i, name in enumerate(model.feature_names):
        rows[i][name] = None
    rows[-1]["plan"] = "platinum"  # not in the training vocabulary
    return rows


def test_columns_arrow_and_frames_give_the_same_answer(model: LakeloopModel, records: list[dict]) -> None:
    frame = model.predict_frame(pd.DataFrame(records))
    served = model.predict_columns(RecordValidator(model.pipeline.dataset, 100).columns(records))
    table = pa.Table.from_pylist(records)
    batch = model.predict_columns({name: table.column(name) for name in model.feature_names})
    for scored in (served, batch):
        assert list(scored.columns) == list(frame.columns)
        assert scored.columns["prediction"].tolist() == frame["prediction"].tolist()
        for name in frame.columns[1:]:
            np.testing.assert_allclose(scored.columns[name], frame[name].to_numpy(), rtol=1e-6)
        assert scored.unknown == {"plan": 1}
    assert frame["prediction"].dtype == np.int64  # classes [0, 1]: the pyfunc's column is typed, as before
    pd.testing.assert_frame_equal(frame, pd.DataFrame(served.columns))  # the frame built from its arrays
    assert served.rows()[0].keys() == set(frame.columns)


def test_a_one_row_slice_and_rows_are_plain_values(model: LakeloopModel, records: list[dict]) -> None:
    served = model.predict_columns(RecordValidator(model.pipeline.dataset, 100).columns(records))
    one = served.slice(3, 4)
    assert len(one) == 1 and one.unknown == {}
    assert one.rows() == [served.rows()[3]]
    assert type(one.rows()[0]["prediction"]) is int and type(one.rows()[0]["probability_1"]) is float


@pytest.mark.parametrize("arrow", [False, True])
def test_a_value_that_is_not_a_number_names_its_feature(model: LakeloopModel, records: list[dict], arrow: bool) -> None:
    rows = [{**records[0], "age": "forty"}]
    columns = pa.Table.from_pylist(rows) if arrow else pd.DataFrame(rows)
    with pytest.raises(ValueError, match="feature 'age' must be numeric"):
        model.predict_columns({name: columns[name] for name in model.feature_names})


def test_a_pyfunc_not_logged_by_lakeloop_gets_a_frame_of_the_columns(records: list[dict]) -> None:
    seen: list[pd.DataFrame] = []

    class Foreign:
        def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
            seen.append(frame)
            return pd.DataFrame({"prediction": frame["age"].fillna(0).to_numpy() * 2})

    table = pa.Table.from_pylist(records[:3])
    scored = _PyfuncPredictor(Foreign()).predict_columns({"age": table.column("age"), "plan": table.column("plan")})
    assert list(seen[0].columns) == ["age", "plan"] and seen[0]["plan"].tolist() == table.column("plan").to_pylist()
    assert scored.columns["prediction"].tolist() == [2 * (r["age"] or 0) for r in records[:3]]


def test_the_model_unpickles_without_importing_mlflow(model: LakeloopModel) -> None:
    """What a batch-inference actor does: MLflow's import cost each actor about 1 s at start."""
    import pickle
    import subprocess
    import sys

    code = (
        "import pickle, sys; model = pickle.loads(sys.stdin.buffer.read()); "
        "assert model.feature_names; import pipelines.inference.scoring_actor; "
        "model.predict_frame(__import__('pandas').DataFrame([dict.fromkeys(model.feature_names)])); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps(model), capture_output=True, check=True, cwd=ROOT
    )
    assert done.stdout.decode().strip() == "[]"


def test_only_a_users_module_is_shipped_to_workers(model: LakeloopModel) -> None:
    """lakeloop's own estimators and installed libraries (scikit-learn here) are on every node; a
    module of the user's is shipped (as Ray's py_modules) with the scoring actors."""
    assert model.code_modules() == []
    from tests.user_families import GaussianNaiveBayes

    matrix = model.pipeline.onehot(model.pipeline.transform_frame(synthetic.generate(200, 3).to_pandas()))
    target = np.arange(200) % 2
    users = SklearnEstimator("nb", GaussianNaiveBayes().fit(matrix, target), "classification", 2, "onehot")
    assert LakeloopModel(model.pipeline, users).code_modules() == [str(ROOT / "tests")]


LOAD_FROM_MODEL_CODE = """
import pathlib, sys
import pandas as pd
import pipelines
from pipelines.training.pyfunc import LakeloopPyfunc  # what MLflow unpickles
from pipelines.training.fitted_model import LakeloopModel
assert pathlib.Path(pipelines.__file__).is_relative_to(sys.argv[1]), pipelines.__file__
model = LakeloopModel.load(sys.argv[2])
print(model.predict_frame(pd.read_json(sys.argv[3], orient="records"))["prediction"].tolist())
"""


def test_the_model_loads_with_only_the_code_it_carries(model: LakeloopModel, records: list[dict], tmp_path) -> None:
    """A fresh interpreter whose `pipelines` is the model's copy (MLflow puts the code first on the
    path, as `mlflow models serve` does): a module the model imports but does not carry fails here."""
    code = model_code(tmp_path / "code").parent
    saved = model.save(tmp_path / "model")
    rows = tmp_path / "rows.json"
    pd.DataFrame(records[:5]).to_json(rows, orient="records")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(code)}
    done = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_MODEL_CODE, str(code), str(saved), str(rows)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = model.predict_frame(pd.read_json(rows, orient="records"))["prediction"].tolist()
    assert done.stdout.strip() == str(expected)


def test_a_frame_missing_or_repeating_a_feature_is_refused_and_other_columns_are_ignored(
    model: LakeloopModel, records: list[dict]
) -> None:
    frame = pd.DataFrame(records)
    expected = model.predict_frame(frame)
    shuffled = frame.assign(request_id=range(len(frame)))[["request_id", *reversed(frame.columns)]]
    pd.testing.assert_frame_equal(model.predict_frame(shuffled), expected)
    with pytest.raises(ValueError, match="missing feature columns: age, plan"):
        model.predict_frame(frame.drop(columns=["plan", "age"]))
    repeated = pd.concat([frame, frame[["age"]]], axis=1)
    with pytest.raises(ValueError, match="feature columns more than once: age"):
        model.predict_frame(repeated)
