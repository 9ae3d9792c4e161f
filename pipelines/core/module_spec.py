"""How a learner is named without importing it: a class by its path, and a torch module (lakeloop's
MLP or the user's) with its constructor arguments. Nothing here imports torch: a process that only
unpickles an xgboost or scikit-learn model never pays for it."""

from __future__ import annotations

import importlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MLP_CLASS = "pipelines.core.network:TabularMLP"


def _split(path: str) -> tuple[str, str]:
    module_name, _, name = path.partition(":") if ":" in path else path.rpartition(".")
    return module_name, name


def class_module(path: str) -> str:
    """The module of `package.module:Class` (or `package.module.Class`)."""
    return _split(path)[0]


def module_source(module_name: str) -> str | None:
    """Where a user's module lives, to ship it with a model or to Ray workers: its top-level package's
    directory, or its file. None for lakeloop's own modules and for installed packages (site-packages:
    scikit-learn, torch, xgboost, or the user's own when installed), which are wherever lakeloop is."""
    top = module_name.split(".")[0]
    if top == "pipelines":
        return None
    module = sys.modules.get(top) or importlib.import_module(top)
    if not getattr(module, "__file__", None):
        return None
    source = Path(module.__file__)
    if {"site-packages", "dist-packages"} & set(source.parts):
        return None
    return str(source.parent if source.name == "__init__.py" else source)


def load_class(path: str) -> type:
    """`package.module:Class` (or `package.module.Class`) -> the class; an error naming the path."""
    module_name, name = _split(path)
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import '{path}': {exc}") from None


@dataclass(frozen=True)
class ModuleSpec:
    """A torch module by class path and constructor arguments: `cls(input_dim, output_dim, **params)`.
    Regression: the module learns the target standardised by (shift, scale), and answers in the label's
    units (a raw target of mean 70 and SD 23 left 8 epochs at RMSE 47, worse than a constant's 23)."""

    class_path: str
    input_dim: int
    output_dim: int
    params: dict[str, Any] = field(default_factory=dict)
    target_shift: float = 0.0
    target_scale: float = 1.0

    def build(self) -> torch.nn.Module:
        return load_class(self.class_path)(self.input_dim, self.output_dim, **self.params)

    def to_dict(self) -> dict:
        return asdict(self)


def output_dim(task: str, classes: list | None) -> int:
    return len(classes or []) if task == "classification" else 1
