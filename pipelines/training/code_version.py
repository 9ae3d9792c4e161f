"""The code a model comes from, read from this process's files: lakeloop's package, the users'
family modules, the model-shaping configuration and the pinned dependencies (core/code_fingerprint
hashes them). No `.git` needed: a `ray job submit --working-dir` upload or an installed wheel works."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
from pathlib import Path

import pipelines
from pipelines.core.code_fingerprint import CodeManifest, build_manifest
from pipelines.core.config import LakeloopConfig
from pipelines.core.module_spec import class_module, module_source

MANIFEST_ARTIFACT = "code_manifest.json"  # on every training run: what `lakeloop release` compares
PACKAGES = ("pipelines", "serve")  # lakeloop's code (found, not imported: serve is the app's layer)
CONSTRAINTS = "constraints.txt"  # the pinned dependency set, beside the package in a checkout
# What a loaded model imports of lakeloop's package: the pyfunc, the fitted model and its features,
# and the pure core they build on. A model carries these (MLflow code_paths), so `mlflow models serve`
# loads it where lakeloop is not installed; uploading the whole package (97 modules, one HTTP request
# each) took 0.31-0.48 s of every registration here, these 26 files 0.08-0.12 s.
# tests/unit/test_fitted_model.py (the model loads with only the code it carries) fails when the
# pyfunc imports a module left out.
MODEL_CODE = (
    "__init__.py",
    "core",
    "training/__init__.py",
    "training/features.py",
    "training/fitted_model.py",
    "training/pyfunc.py",
)


def family_code(config: LakeloopConfig, family: str) -> list[str]:
    """The user's module of a torch or sklearn family, logged with the model so any process can
    unpickle it (a top-level module file, or its package's directory); nothing for built-in ones."""
    spec = config.train.families[family]
    if spec.kind not in ("torch", "sklearn") or not spec.class_path:
        return []
    source = module_source(class_module(spec.class_path))
    return [source] if source else []


def model_code(directory: Path) -> Path:
    """lakeloop's package as a loaded model needs it (MODEL_CODE), copied to `directory`/pipelines."""
    source = Path(pipelines.__file__).parent
    target = directory / source.name
    for entry in MODEL_CODE:
        if (source / entry).is_dir():
            shutil.copytree(source / entry, target / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (target / entry).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / entry, target / entry)
    return target


def _python_files(root: Path) -> dict[str, bytes]:
    """Every .py file under `root` (a package directory or one module), keyed by its path from
    `root`'s parent."""
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return {p.relative_to(root.parent).as_posix(): p.read_bytes() for p in files}


def _pins() -> str:
    """The constraints file of a checkout; installed, the versions of lakeloop's requirements."""
    checkout = Path(pipelines.__file__).resolve().parent.parent / CONSTRAINTS
    if checkout.is_file():
        return checkout.read_text()
    try:
        required = importlib.metadata.requires("lakeloop") or []
    except importlib.metadata.PackageNotFoundError:
        return ""
    lines = []
    for requirement in required:
        if "extra ==" in requirement:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return "\n".join(lines)


def current_manifest(config: LakeloopConfig) -> CodeManifest:
    """This process's code, every configured family's user module, the configuration and the pins."""
    files: dict[str, bytes] = {}
    for package in PACKAGES:
        files |= _python_files(Path(importlib.util.find_spec(package).origin).resolve().parent)
    for family in sorted(config.train.families):
        for source in family_code(config, family):
            files |= _python_files(Path(source).resolve())
    return build_manifest(files, _pins(), config.model_dump(mode="json"))
