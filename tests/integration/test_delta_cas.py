"""Compare-and-set appends on a real Delta table: of writers that saw the same version, one commits."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.adapters import delta

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("existing", [False, True], ids=["creating", "appending"])
def test_of_writers_that_saw_one_version_exactly_one_commits(tmp_path: Path, existing: bool) -> None:
    uri = str(tmp_path / "reports")
    if existing:
        delta.Table(uri).append(pa.table({"writer": [-1]}))
    seen = delta.Table(uri).version()
    start, outcomes = threading.Barrier(4), []

    def write(number: int) -> None:
        start.wait()  # all four append at once, from the same observed version
        try:
            delta.Table(uri).append(pa.table({"writer": [number]}), expected_version=seen)
            outcomes.append("committed")
        except delta.CommitConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["committed", "conflict", "conflict", "conflict"]
    assert delta.Table(uri).version() == seen + 1 and delta.Table(uri).count() == (2 if existing else 1)


def test_blind_writers_creating_a_table_at_once_all_commit(tmp_path: Path) -> None:
    """Two monitors recording their first retraining event at once both created the attempts table;
    delta-rs does not rebase a create, so one failed ("protocol changed") and its monitor exited 1."""
    uri = str(tmp_path / "attempts")
    start, failures = threading.Barrier(4), []

    def write(number: int) -> None:
        start.wait()
        try:
            delta.Table(uri).append(pa.table({"writer": [number]}))
        except delta.TableError as exc:
            failures.append(str(exc))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert (
        sorted(delta.Table(uri).read().column("writer").to_pylist()) == [0, 1, 2, 3] and delta.Table(uri).version() == 3
    )


def test_a_blind_append_that_read_the_table_before_a_metadata_commit_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rare interleaving behind the test above, made certain: under four creating writers,
    delta-rs rebased two losing creates into versions 1 and 2, each with its own metadata, and a
    writer that had read version 0 failed ("metadata changed") once in 300 runs."""
    uri = str(tmp_path / "attempts")
    delta.Table(uri).append(pa.table({"writer": [0]}))
    real_write, calls = delta.write_deltalake, []  # one entry per write attempt

    def another_writer_changes_metadata_between_read_and_commit(target, data, **options) -> None:
        calls.append(target)
        if len(calls) == 1:
            read_before = delta.Table(uri).open()
            delta.Table(uri).open().alter.set_table_properties({"delta.appendOnly": "true"})
            target = read_before
        real_write(target, data, **options)

    monkeypatch.setattr(delta, "write_deltalake", another_writer_changes_metadata_between_read_and_commit)
    assert delta.Table(uri).append(pa.table({"writer": [1]})) == 2
    assert len(calls) == 2 and sorted(delta.Table(uri).read().column("writer").to_pylist()) == [0, 1]
