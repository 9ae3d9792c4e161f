"""Point-in-time joins: lakeloop's join (on Ray, and its per-bucket join in one process) against
DuckDB's ASOF JOIN and polars' join_asof, on the same rows.

    python -m benchmarks.point_in_time [--labels 1000000 10000000] [--entities 1000000] [--versions 10] [--rounds 3]

The feature view holds `versions` rows per entity at distinct times (no two rows of an entity share a
time, so every engine's answer is defined: the latest row at or before the label's time); labels are
for random entities (a tenth of them unknown to the view) at random times, some before any feature
row. Each engine runs in a fresh process: it loads the Parquet files (not timed), joins, and writes
the feature value each label got, in label order; the parent checks that every engine gave the same
values exactly. Every engine runs `rounds` times, the rounds interleaved; the ratios compare medians.
Peak memory is the engine process tree's resident memory (Ray's workers included), the highest round.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import child_json, local_ray, peak_memory, write_result

DAY_US = 86_400 * 1_000_000
FILE_ROWS = 1_000_000  # labels and features are written in files of this many rows (Ray reads a block each)


def make_data(directory: Path, labels: int, entities: int, versions: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    gaps = rng.integers(1, 30 * DAY_US, (entities, versions), dtype=np.int64)
    times = np.cumsum(gaps, axis=1).ravel()  # strictly increasing per entity
    keys = np.repeat(np.arange(entities, dtype=np.int64), versions)
    order = rng.permutation(len(keys))
    features = pa.table(
        {
            "key": keys[order],
            "ft": pa.array(times[order], pa.timestamp("us", tz="UTC")),
            "value": rng.normal(0, 1, len(keys))[order],
        }
    )
    horizon = int(times.max())
    events = pa.table(
        {
            "row": np.arange(labels, dtype=np.int64),
            "key": rng.integers(0, int(entities * 1.1), labels, dtype=np.int64),
            "t": pa.array(rng.integers(0, horizon, labels, dtype=np.int64), pa.timestamp("us", tz="UTC")),
        }
    )
    for name, table in (("features", features), ("labels", events)):
        (directory / name).mkdir()
        for part, start in enumerate(range(0, table.num_rows, FILE_ROWS)):
            pq.write_table(table.slice(start, FILE_ROWS), directory / name / f"part-{part:04d}.parquet")


def _view():
    from pipelines.core.point_in_time import ViewJoin

    return ViewJoin(("key",), "ft", ("value",))


def run_lakeloop_ray(directory: Path) -> tuple[float, np.ndarray]:
    import ray.data

    from pipelines.feature_tables.join import join_view

    labels = ray.data.read_parquet(str(directory / "labels")).materialize()
    features = ray.data.read_parquet(str(directory / "features")).materialize()
    started = time.perf_counter()
    joined = join_view(labels, features, "t", _view(), buckets=16).materialize()
    seconds = time.perf_counter() - started
    frame = joined.to_pandas()
    return seconds, frame.sort_values("row")["value"].to_numpy()


def run_lakeloop_one_process(directory: Path) -> tuple[float, np.ndarray]:
    import pandas as pd

    from pipelines.core.point_in_time import as_of_join

    labels, features = (pd.read_parquet(directory / name) for name in ("labels", "features"))
    started = time.perf_counter()
    joined = as_of_join(labels, features, "t", _view())
    return time.perf_counter() - started, joined["value"].to_numpy()


def run_duckdb(directory: Path) -> tuple[float, np.ndarray]:
    import duckdb
    import pyarrow.parquet as pq

    connection = duckdb.connect()
    labels, features = (pq.read_table(directory / name) for name in ("labels", "features"))
    connection.register("labels", labels)
    connection.register("features", features)
    started = time.perf_counter()
    joined = connection.sql(
        "SELECT l.row, f.value FROM labels l ASOF LEFT JOIN features f ON l.key = f.key AND l.t >= f.ft ORDER BY l.row"
    ).to_arrow_table()
    seconds = time.perf_counter() - started
    return seconds, joined.column("value").to_numpy(zero_copy_only=False)  # nulls as NaN


def run_polars(directory: Path) -> tuple[float, np.ndarray]:
    import polars as pl

    labels, features = (pl.read_parquet(directory / name / "*.parquet") for name in ("labels", "features"))
    started = time.perf_counter()
    joined = (
        labels.sort("t")
        .join_asof(
            features.sort("ft"), left_on="t", right_on="ft", by="key", strategy="backward", check_sortedness=False
        )
        .sort("row")
    )
    return time.perf_counter() - started, joined["value"].to_numpy()


ENGINES = {
    "lakeloop (Ray, 16 buckets)": run_lakeloop_ray,
    "lakeloop (one process)": run_lakeloop_one_process,
    "duckdb": run_duckdb,
    "polars": run_polars,
}


def child(engine: str, directory: Path) -> None:
    with peak_memory() as memory:
        if engine.startswith("lakeloop (Ray"):
            with local_ray():
                seconds, values = ENGINES[engine](directory)
        else:
            seconds, values = ENGINES[engine](directory)
    np.save(directory / f"values-{list(ENGINES).index(engine)}.npy", values.astype(float))
    print(json.dumps({"seconds": seconds, "peak_mb": memory["peak_mb"], "rows": len(values)}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.point_in_time")
    parser.add_argument("--labels", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--entities", type=int, default=1_000_000)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=ENGINES)
    parser.add_argument("--data")
    args = parser.parse_args()
    if args.child:
        child(args.child, Path(args.data))
        return
    rows = []
    for labels in args.labels:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            make_data(directory, labels, args.entities, args.versions)
            runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
            for round_ in range(args.rounds):  # rounds interleave the engines: the machine's speed drifts
                for number, engine in enumerate(ENGINES):
                    result = child_json(
                        "benchmarks.point_in_time", ["--child", engine, "--data", tmp], f"{engine} at {labels} labels"
                    )
                    values = np.load(directory / f"values-{number}.npy")
                    reference = np.load(directory / "values-0.npy")
                    result["same_values_as_lakeloop_ray"] = bool(np.array_equal(values, reference, equal_nan=True))
                    runs[engine].append(result)
                    print(
                        f"round {round_ + 1}: {engine:>28} {labels:>11,} labels: {result['seconds']:7.2f} s, "
                        f"peak {result['peak_mb']:,.0f} MB, same values: {result['same_values_as_lakeloop_ray']}",
                        flush=True,
                    )
            for engine, results in runs.items():
                rows.append(
                    {
                        "engine": engine,
                        "labels": labels,
                        "seconds": float(np.median([r["seconds"] for r in results])),
                        "seconds_per_round": [r["seconds"] for r in results],
                        "peak_mb": max(r["peak_mb"] for r in results),
                        "same_values_as_lakeloop_ray": all(r["same_values_as_lakeloop_ray"] for r in results),
                    }
                )
    ratios = {  # medians over the rounds
        str(labels): {
            r["engine"]: r["seconds"]
            / next(d["seconds"] for d in rows if d["engine"] == "duckdb" and d["labels"] == labels)
            for r in rows
            if r["labels"] == labels
        }
        for labels in args.labels
    }
    write_result(
        "point_in_time",
        {
            "entities": args.entities,
            "versions": args.versions,
            "rounds": args.rounds,
            "rows": rows,
            "seconds_vs_duckdb": ratios,
        },
    )
    print(json.dumps(ratios, indent=2))


if __name__ == "__main__":
    main()
