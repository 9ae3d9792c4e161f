"""The columns every lakeloop model answers with: what the pyfunc returns, Serve returns and logs,
and the monitor scores."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

PREDICTION_COLUMN = "prediction"  # the class (classification) or the value (regression)
PROBABILITY_PREFIX = "probability_"  # classification: one column per class, probability_<class>


@dataclass(frozen=True)
class Scored:
    """A model's answer by column (name -> one value per row: the prediction, then, for classification,
    each class's probability), and how many categorical values per feature were outside the training
    vocabulary. Serve and batch inference take it as is; only the pyfunc makes a DataFrame of it."""

    columns: Mapping[str, np.ndarray]
    unknown: Mapping[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def rows(self) -> list[dict]:
        """One JSON-ready dict per row (Python values, no numpy scalars)."""
        lists = {name: values.tolist() for name, values in self.columns.items()}
        return [dict(zip(lists, values, strict=True)) for values in zip(*lists.values(), strict=True)]

    def slice(self, start: int, stop: int) -> Scored:
        """Rows start..stop (views, not copies); unknown counts belong to the whole answer, not a slice."""
        return Scored({name: values[start:stop] for name, values in self.columns.items()})

    @classmethod
    def of_frame(cls, frame: pd.DataFrame) -> Scored:
        """Any pyfunc's output frame."""
        return cls({str(name): frame[name].to_numpy() for name in frame.columns})
