"""The demo's data landing: rows of the synthetic churn generator appended to a Delta table (what
`lakeloop data generate` and the demo run)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pyarrow.compute as pc

from pipelines.adapters import delta
from pipelines.core.config import LakeloopConfig
from pipelines.scenarios import synthetic


@dataclass(frozen=True)
class Landing:
    uri: str
    version: int
    rows: int
    positive_rate: float


def land_demo_rows(
    config: LakeloopConfig, rows: int, seed: int, drift: synthetic.Drift = "none", table: str | None = None
) -> Landing:
    """Append `rows` rows of the demo generator to a Delta table (default: the dataset table), their
    event times continuing after the newest already there."""
    target = delta.tables(config).source(table)
    newest = None
    if target.exists():
        newest = pc.max(target.read([synthetic.EVENT_TIME]).column(0)).as_py()
    start = synthetic.DEFAULT_START if newest is None else newest + timedelta(seconds=1)
    data = synthetic.generate(rows, seed, drift, start)
    version = target.append(data)
    return Landing(target.uri, version, data.num_rows, pc.mean(data.column(synthetic.LABEL)).as_py())
