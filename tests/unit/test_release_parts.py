"""The parts of `lakeloop release` that need no cluster: this checkout's manifest (no .git needed, a
user's family module included) and the smoke stage's comparison of served answers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from pipelines.core.config import LakeloopConfig, parse_config
from pipelines.training.code_version import current_manifest
from pipelines.training.smoke_stage import output_problems, smoke_config

ROOT = Path(__file__).resolve().parents[2]


def _with_family(raw_config: dict) -> LakeloopConfig:
    raw_config["train"]["families"] = {
        "naive_bayes": {"kind": "sklearn", "class_path": "tests.user_families:GaussianNaiveBayes"}
    }
    return parse_config(raw_config)


def test_the_manifest_covers_the_package_the_users_module_pins_and_model_settings(raw_config: dict) -> None:
    manifest = current_manifest(_with_family(raw_config))
    assert "pipelines/train.py" in manifest.files and "serve/app.py" in manifest.files
    assert "tests/user_families.py" in manifest.files  # the family module, with its package as shipped
    assert manifest.pins["mlflow"] == "3.17.2"
    assert "train.family" in manifest.conf and not any(k.startswith("serving.") for k in manifest.conf)


def test_a_checkout_without_git_gives_the_same_fingerprint(raw_config: dict, tmp_path: Path) -> None:
    """A copy of the package and constraints (what `ray job submit --working-dir` uploads, no .git)."""
    copy = tmp_path / "checkout"
    for part in ("pipelines", "serve"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "constraints.txt", copy / "constraints.txt")
    code = (
        "import sys, json; from pipelines.core.config import parse_config; "
        "from pipelines.training.code_version import current_manifest; "
        "print(current_manifest(parse_config(json.loads(sys.stdin.read()))).fingerprint)"
    )
    env = {"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"}
    import json

    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(raw_config), cwd=copy, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert not (copy / ".git").exists()
    assert done.stdout.strip() == current_manifest(parse_config(raw_config)).fingerprint


def test_the_smoke_app_follows_the_candidate_and_logs_to_its_own_tables(config: LakeloopConfig) -> None:
    smoke = smoke_config(config)
    assert smoke.serving.alias == "candidate"
    shipped, own = config.serving.prediction_log, smoke.serving.prediction_log
    assert {own.predictions_table, own.feedback_table, own.labelled_table}.isdisjoint(
        {shipped.predictions_table, shipped.feedback_table, shipped.labelled_table}
    )


EXPECTED = pd.DataFrame({"prediction": [1, 0], "probability_1": [0.9, 0.2]})
SERVED = [{"prediction": 1, "probability_1": 0.9}, {"prediction": 0, "probability_1": 0.2}]


def test_served_answers_equal_to_the_models_pass() -> None:
    assert output_problems(SERVED, EXPECTED, ["prediction", "probability_1"]) == []


def test_a_missing_row_other_columns_or_other_values_are_problems() -> None:
    assert output_problems(SERVED[:1], EXPECTED, []) == ["1 predictions for 2 golden rows"]
    renamed = [{"label": r["prediction"], "probability_1": r["probability_1"]} for r in SERVED]
    assert any("differ from the champion's" in p for p in output_problems(renamed, EXPECTED, list(EXPECTED)))
    shifted = [{**r, "probability_1": r["probability_1"] + 0.01} for r in SERVED]
    assert output_problems(shifted, EXPECTED, list(EXPECTED)) == [
        "'probability_1' served differs from the model's in-process answer"
    ]
