"""The concept-drift streams the recovery and learning-curve benchmarks run, and the lakeloop
configuration of each (only the dataset section and the gate differ).

- churn: the demo generator's `concept` scenario (another labelling rule over the same features);
- sea: SEA concepts (Street & Kim 2001), theta 7 -> 9.5, 10% label noise; its gate metric is
  accuracy (a threshold shift keeps the old model's ranking, so ROC AUC cannot see it);
- agrawal: Agrawal et al. (1993) loan applicants, function 2 -> 3: the label moves from salary bands
  to education levels (a categorical feature that did not matter before); 5% label noise.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa

from benchmarks.common import ROOT


@dataclass(frozen=True)
class Stream:
    name: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    label: str
    metric: str

    @property
    def features(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def table(self, n: int, seed: int, drifted: bool = False, start: datetime | None = None) -> pa.Table:
        """`n` rows of the old (or, `drifted`, the new) concept, event times from `start`."""
        from pipelines.scenarios import synthetic

        start = start or synthetic.DEFAULT_START
        if self.name == "sea":
            return synthetic.sea(n, seed, 4 if drifted else 3, start)
        if self.name == "agrawal":
            return synthetic.agrawal(n, seed, 3 if drifted else 2, start)
        return synthetic.generate(n, seed, "concept" if drifted else "none", start)

    def rows(self, n: int, seed: int, drifted: bool, start: datetime | None = None) -> pd.DataFrame:
        return self.table(n, seed, drifted, start).to_pandas()


STREAMS = {
    "churn": Stream(
        "churn",
        ("tenure_months", "monthly_charges", "support_calls", "age"),
        ("plan", "contract", "region"),
        "churned",
        "roc_auc",
    ),
    "sea": Stream("sea", ("x1", "x2", "x3"), (), "label", "accuracy"),
    "agrawal": Stream(
        "agrawal",
        ("salary", "commission", "age", "hvalue", "hyears", "loan"),
        ("elevel", "car", "zipcode"),
        "label",
        "accuracy",
    ),
}


def stream_raw_config(stream: Stream, root: Path, tracking_uri: str) -> dict:
    """The shipped configuration with this stream's dataset, under `root`."""
    import yaml

    raw = yaml.safe_load((ROOT / "conf" / "lakeloop.yaml").read_text())
    raw["storage"]["root"] = str(root)
    raw["mlflow"].update(tracking_uri=tracking_uri, registered_model=f"bench-{stream.name}-{uuid.uuid4().hex[:6]}")
    if stream.name != "churn":
        features = [{"name": f, "kind": "numeric"} for f in stream.numeric]
        features += [{"name": f, "kind": "categorical"} for f in stream.categorical]
        raw["dataset"].update(label=stream.label, features=features)
        raw["gate"].update(metric="accuracy", thresholds={"accuracy": 0.7})
    return raw
