"""Which files of a registered pyfunc a lakeloop process downloads (pure: a fake artifact listing)."""

from __future__ import annotations

from mlflow.entities import FileInfo

from pipelines.adapters.registry import MODEL_CODE_DIR, model_files

LISTING = {
    None: [
        FileInfo("MLmodel", False, 10),
        FileInfo("artifacts", True, None),
        FileInfo("code", True, None),
        FileInfo("python_model.pkl", False, 10),
    ],
    "code": [FileInfo("code/pipelines", True, None), FileInfo("code/user_families.py", False, 10)],
}


def test_lakeloops_own_package_is_left_out_of_the_code() -> None:
    paths = model_files(LISTING.__getitem__, MODEL_CODE_DIR)
    assert paths == ["MLmodel", "artifacts", "code/user_families.py", "python_model.pkl"]


def test_a_model_without_code_is_downloaded_whole() -> None:
    listing = {None: [FileInfo("MLmodel", False, 10), FileInfo("model.pkl", False, 10)]}
    assert model_files(listing.__getitem__, MODEL_CODE_DIR) == ["MLmodel", "model.pkl"]


def test_a_file_named_like_the_code_directory_is_just_a_file() -> None:
    listing = {None: [FileInfo("code", False, 3)]}
    assert model_files(listing.__getitem__, MODEL_CODE_DIR) == ["code"]
