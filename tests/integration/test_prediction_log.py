"""The prediction log's label join on real Delta tables (no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from pipelines.adapters import delta
from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row
from pipelines.core.config import LakeloopConfig
from pipelines.scenarios import synthetic
from pipelines.training.labelled_feedback import join_labels, quarantine
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
    result = join_labels(config, labels)
    assert result.joined.empty
    assert sorted(result.unjoined.column("request_id").to_pylist()) == ["also-unknown", "never-served"]


def _served_with_labels(config: LakeloopConfig) -> tuple[pa.Table, object, object]:
    served, labels = served_log(config, synthetic.generate(10, 1).to_pandas(), datetime(2026, 1, 1, tzinfo=UTC))
    delta.Table(config.storage.resolve(config.serving.prediction_log.predictions_table)).append(served)
    first_label = labels.column("label")[0].as_py()
    return labels, first_label, next(c for c in config.dataset.classes if str(c) != str(first_label))


def _label_of(joined, request_id: str, row: int, label: str) -> list[str]:
    return [str(v) for v in joined[(joined["request_id"] == request_id) & (joined["row"] == row)][label]]


def test_a_rows_first_label_stands_unless_a_later_one_is_an_update(config: LakeloopConfig) -> None:
    labels, first_label, other = _served_with_labels(config)
    again = feedback_row("q0", 0, other, datetime(2027, 1, 1, tzinfo=UTC))  # a second label, not an update
    result = join_labels(config, pa.concat_tables([labels, pa.Table.from_pylist([again], schema=FEEDBACK_SCHEMA)]))
    assert len(result.joined) == 10 and result.unjoined.num_rows == 0
    assert _label_of(result.joined, "q0", 0, config.dataset.label) == [str(first_label)]
    update = feedback_row("q0", 0, other, datetime(2027, 1, 2, tzinfo=UTC), update=True)
    both = pa.concat_tables([labels, pa.Table.from_pylist([again, update], schema=FEEDBACK_SCHEMA)])
    assert _label_of(join_labels(config, both).joined, "q0", 0, config.dataset.label) == [str(other)]


def test_a_repeated_label_checked_later_does_not_count_again(config: LakeloopConfig) -> None:
    """The monitor joins only the labels that landed since its last pass; given the earlier ones
    (history), a repeated label of an already labelled row does not stand, and an update does."""
    labels, _, other = _served_with_labels(config)
    again = feedback_row("q0", 0, other, datetime(2027, 1, 1, tzinfo=UTC))
    update = feedback_row("q0", 1, other, datetime(2027, 1, 1, tzinfo=UTC), update=True)
    landed = pa.Table.from_pylist([again, update], schema=FEEDBACK_SCHEMA)
    result = join_labels(config, landed, history=pa.concat_tables([labels, landed]))
    assert result.joined[["request_id", "row"]].values.tolist() == [["q0", 1]]


def test_a_label_that_is_not_a_class_never_joins_and_is_dead_lettered_once(config: LakeloopConfig) -> None:
    """A planted label (or one left over after the classes changed) used to fail the cast, and with it
    every monitor pass and every feedback retraining."""
    labels, _, _ = _served_with_labels(config)
    planted_at = datetime(2027, 1, 1, tzinfo=UTC)
    planted = pa.Table.from_pylist([feedback_row("q1", 0, "maybe", planted_at, update=True)], FEEDBACK_SCHEMA)
    feedback = delta.Table(config.storage.resolve(config.serving.prediction_log.feedback_table))
    feedback.append(labels, cdf=True)
    feedback.append(planted)
    landed, _ = feedback.changes(None, ["request_id", "row", "received_at", "label"])
    result = join_labels(config, landed)
    assert len(result.joined) == 10 and result.invalid.column("label").to_pylist() == ["maybe"]  # q1/0 keeps its label
    assert "not one of the classes" in result.invalid.column("reason")[0].as_py()
    assert quarantine(config, result.invalid) == 1
    assert quarantine(config, result.invalid) == 0  # a second pass over the same rows writes nothing
    letters = feedback.dead_letter().read().to_pylist()
    assert len(letters) == 1 and '"maybe"' in letters[0]["row_json"]
