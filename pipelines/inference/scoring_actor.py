"""Scoring a batch of rows with a lakeloop model, in a module of its own: a scoring actor imports this
module and what the model's pickle needs (torch or xgboost, the feature transform), not MLflow or the
registry (`pipelines.inference.scoring` imports both: about 1 s more per actor start on 2 cores)."""

from __future__ import annotations

import io
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import ray
from ray.data.block import BlockMetadataWithSchema

from pipelines.adapters.prediction_log import MODEL_NAME, MODEL_VERSION

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.adapters.registry import Predictor


def score_batch(predictor: Predictor, batch: pa.Table, name: str, version: str, features: list[str]) -> pa.Table:
    """Arrow in, Arrow out, no pandas: the model reads the feature columns as Arrow (strings are looked
    up in Arrow), the batch's columns pass through uncopied and the predictions are appended as Arrow
    columns, then the model's identity. Scoring a scored table replaces its prediction columns."""
    scored = predictor.predict_columns({column: batch.column(column) for column in features})
    added = [*scored.columns, MODEL_NAME, MODEL_VERSION]
    batch = batch.drop_columns([c for c in added if c in batch.column_names])
    for column, values in scored.columns.items():
        batch = batch.append_column(column, pa.array(values))
    batch = batch.append_column(MODEL_NAME, pa.repeat(name, batch.num_rows))
    return batch.append_column(MODEL_VERSION, pa.repeat(version, batch.num_rows))


def score_block(
    predictor: Predictor, block: pa.Table | pd.DataFrame, name: str, version: str, features: list[str], batch_size: int
) -> pa.Table:
    """One block of a Dataset, `batch_size` rows at a time (the transform's matrix stays that small)."""
    if not isinstance(block, pa.Table):  # a Dataset made from pandas holds pandas blocks
        block = pa.Table.from_pandas(block, preserve_index=False)
    parts = [
        score_batch(predictor, block.slice(start, batch_size), name, version, features)
        for start in range(0, max(block.num_rows, 1), batch_size)
    ]
    return pa.concat_tables(parts) if len(parts) > 1 else parts[0]


def module_archive(sources: list[str]) -> bytes:
    """The user's modules (files or package directories) as one zip, each under its own name."""
    if not sources:
        return b""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for source in map(Path, sources):
            files = [source] if source.is_file() else sorted(source.rglob("*.py"))
            for file in files:
                archive.write(file, str(file.relative_to(source.parent)))
    return buffer.getvalue()


def unpack_modules(archive: bytes) -> str:
    """The archive's modules in a fresh directory, to put on sys.path."""
    directory = tempfile.mkdtemp(prefix="lakeloop-model-code-")
    with zipfile.ZipFile(io.BytesIO(archive)) as modules:
        modules.extractall(directory)
    return directory


class ScoringActor:
    """One actor of a scoring pool: takes the driver's model from the object store once, then scores
    every block it is sent."""

    def __init__(
        self,
        model: list,
        code: bytes,
        name: str,
        version: str,
        features: list[str],
        threads: int,
        batch_size: int,
    ) -> None:
        """`model`: the driver's model in the object store, inside a list (Ray resolves only top-level
        references before the constructor runs), or the model itself; `code`: the user's modules it
        needs (module_archive),
        unpacked onto sys.path before the model is unpickled. Torch is imported only when the model
        is a network (1.4 s of an actor's start on 2 cores)."""
        if code:
            sys.path.insert(0, unpack_modules(code))
        self.predictor = ray.get(model[0]) if isinstance(model[0], ray.ObjectRef) else model[0]
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        estimator = getattr(self.predictor, "estimator", None)
        if hasattr(estimator, "threads"):  # a tree ensemble: as many threads as the actor's CPUs
            estimator.threads = threads
        self.name, self.version, self.features, self.batch_size = name, version, features, batch_size

    def ready(self) -> bool:
        """Answers once the actor has started (it had a CPU) and holds the model."""
        return True

    def score(self, block: pa.Table | pd.DataFrame) -> tuple[pa.Table, BlockMetadataWithSchema]:
        """The scored block and its Ray Data metadata (two returns: the driver reads only the second)."""
        scored = score_block(self.predictor, block, self.name, self.version, self.features, self.batch_size)
        return scored, BlockMetadataWithSchema.from_block(scored)
