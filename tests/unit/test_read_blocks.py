"""How many blocks Ray Data reads a Delta table into: few enough that every later map runs few tasks,
enough that every CPU has one."""

from __future__ import annotations

from pipelines.adapters.delta import ROWS_PER_READ_BLOCK, read_blocks


def test_a_large_table_reads_into_blocks_of_about_a_million_rows() -> None:
    assert read_blocks(10_000_000, cpus=2) == 10
    assert read_blocks(10 * ROWS_PER_READ_BLOCK + 1, cpus=2) == 11


def test_a_small_table_still_gives_every_cpu_a_block() -> None:
    assert read_blocks(4_000, cpus=2) == 2
    assert read_blocks(3_000_000, cpus=16) == 16


def test_an_empty_table_or_an_unknown_cluster_reads_into_at_least_one_block() -> None:
    assert read_blocks(0, cpus=0) == 1
