"""The prediction log's label join on real Delta tables (no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row
from pipelines.core.config import LakeloopConfig
from pipelines.scenarios import synthetic
from pipelines.training.labelled_feedback import join_labels
from tests.helpers import served_log

pytestmark = pytest.mark.integration


def test_labels_for_requests_never_served_are_unjoined_not_an_error(config: LakeloopConfig) -> None:
    """A label whose request id matches no served row at all (a client's typo, a fuzzer) used to make
    the join fail on every monitor pass (an empty match gave a column of Arrow type null)."""
    served, _ = served_log(config, synthetic.generate(10, 1).to_pandas(), datetime(2026, 1, 1, tzinfo=UTC))
    delta.Table(config.storage.resolve(config.serving.prediction_log.predictions_table)).append(served)
    now = datetime.now(UTC)
    labels = pa.Table.from_pylist(
        [feedback_row("never-served", 0, 1, now), feedback_row("also-unknown", 3, 0, now)], schema=FEEDBACK_SCHEMA
    )
    joined, unjoined = join_labels(config, labels)
    assert joined.empty and sorted(unjoined.column("request_id").to_pylist()) == ["also-unknown", "never-served"]


def test_a_label_joins_its_row_and_the_newest_label_wins(config: LakeloopConfig) -> None:
    served, labels = served_log(config, synthetic.generate(10, 1).to_pandas(), datetime(2026, 1, 1, tzinfo=UTC))
    delta.Table(config.storage.resolve(config.serving.prediction_log.predictions_table)).append(served)
    first_label = labels.column("label")[0].as_py()
    other = next(c for c in config.dataset.classes if str(c) != str(first_label))
    relabel = feedback_row("q0", 0, other, datetime(2027, 1, 1, tzinfo=UTC))
    both = pa.concat_tables([labels, pa.Table.from_pylist([relabel], schema=FEEDBACK_SCHEMA)])
    joined, unjoined = join_labels(config, both)
    assert len(joined) == 10 and unjoined.num_rows == 0
    first = joined[(joined["request_id"] == "q0") & (joined["row"] == 0)]
    assert [str(v) for v in first[config.dataset.label]] == [str(other)]
