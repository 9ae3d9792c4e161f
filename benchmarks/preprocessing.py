"""Preprocessing: lakeloop's Ray Data pipeline against single-process pandas (and polars) on the
same Delta table.

    python -m benchmarks.preprocessing [--sizes 10000 1000000 10000000]

Work, the same in every engine: read the feature, label and event-time columns of a pinned Delta
version; split by event time (70/15/15); fit mean imputation + standard scaling of the numeric
features and mode imputation + one-hot encoding of the categorical ones on the train split; turn
every split into a float32 feature matrix and integer targets. Each run is a fresh process; peak
memory is the resident memory of that process and its children (Ray's workers included; shared
object-store pages count once per process that maps them). Ray's time excludes `ray.init` (shown
separately); validation is not timed (pandas does none).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import child_json, demo_config, local_ray, peak_memory, timed, write_result

CHUNK = 1_000_000


def make_table(uri: str, rows: int) -> None:
    from pipelines.adapters import delta
    from pipelines.scenarios import synthetic

    for start in range(0, rows, CHUNK):
        delta.Table(uri).append(synthetic.generate(min(CHUNK, rows - start), seed=start // CHUNK + 1))


def run_ray(config, uri: str) -> dict:
    from pipelines.training.data import prepare
    from pipelines.training.validation import validate_table

    report = validate_table(config, uri)

    def work() -> int:
        prepared = prepare(config, reports=[report])
        return sum(ds.materialize().count() for ds in prepared.splits.values())

    with local_ray() as init_s, peak_memory() as memory:
        seconds, rows = timed(work)
    return {"seconds": seconds, "ray_init_s": init_s, "rows": rows, "peak_mb": memory["peak_mb"]}


def _pandas_matrices(frame, dataset) -> int:
    import pandas as pd
    import pyarrow as pa

    from pipelines.core.splits import SPLITS, TRAIN, by_time, time_cutoffs

    cutoffs = time_cutoffs(pa.array(frame[dataset.event_time]), dataset.split)
    split = by_time(frame[dataset.event_time], cutoffs)
    train = frame[split == TRAIN]
    means = {c: train[c].mean() for c in dataset.numeric}
    stds = {c: train[c].fillna(means[c]).std(ddof=0) for c in dataset.numeric}
    modes = {c: train[c].mode().iloc[0] for c in dataset.categorical}
    categories = {c: sorted(train[c].dropna().unique()) for c in dataset.categorical}
    classes = {str(c): i for i, c in enumerate(dataset.classes or [])}
    rows = 0
    for code in range(len(SPLITS)):
        part = frame[split == code]
        numeric = [
            ((part[c].astype("float64").fillna(means[c]) - means[c]) / stds[c]).to_numpy(np.float32)[:, None]
            for c in dataset.numeric
        ]
        onehot = [
            pd.get_dummies(pd.Categorical(part[c].fillna(modes[c]), categories=categories[c])).to_numpy(np.float32)
            for c in dataset.categorical
        ]
        matrix = np.concatenate(numeric + onehot, axis=1)
        target = part[dataset.label].astype(str).map(classes).to_numpy(np.int64)
        rows += len(matrix) if len(matrix) == len(target) else 0
    return rows


def run_pandas(config, uri: str) -> dict:
    from deltalake import DeltaTable

    with peak_memory() as memory:
        started = time.perf_counter()
        frame = DeltaTable(uri).to_pandas(columns=config.dataset.required_columns)
        rows = _pandas_matrices(frame, config.dataset)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "peak_mb": memory["peak_mb"]}


def run_polars(config, uri: str) -> dict:
    import polars as pl

    dataset = config.dataset
    with peak_memory() as memory:
        started = time.perf_counter()
        frame = pl.read_delta(uri, columns=dataset.required_columns)
        micros = frame[dataset.event_time].dt.epoch("us")
        q = dataset.split.train_fraction
        first, second = micros.quantile(q, "lower"), micros.quantile(q + dataset.split.validation_fraction, "lower")
        split = (
            pl.when(micros >= second)
            .then(pl.lit("test"))
            .when(micros >= first)
            .then(pl.lit("validation"))
            .otherwise(pl.lit("train"))
        )
        frame = frame.with_columns(split.alias("__split"))
        train = frame.filter(pl.col("__split") == "train")
        means = {c: train[c].cast(pl.Float64).mean() for c in dataset.numeric}
        stds = {c: train[c].cast(pl.Float64).fill_null(means[c]).std(ddof=0) for c in dataset.numeric}
        modes = {c: train[c].drop_nulls().mode().sort()[0] for c in dataset.categorical}
        categories = {c: sorted(train[c].drop_nulls().unique().to_list()) for c in dataset.categorical}
        rows = 0
        for name in ("train", "validation", "test"):
            part = frame.filter(pl.col("__split") == name)
            columns = [
                ((pl.col(c).cast(pl.Float64).fill_null(means[c]) - means[c]) / stds[c]).cast(pl.Float32).alias(c)
                for c in dataset.numeric
            ]
            columns += [
                (pl.col(c).fill_null(modes[c]) == v).cast(pl.Float32).alias(f"{c}={v}")
                for c in dataset.categorical
                for v in categories[c]
            ]
            matrix = part.select(columns).to_numpy()
            target = part[dataset.label].cast(pl.Int64).to_numpy()
            rows += len(matrix) if len(matrix) == len(target) else 0
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "rows": rows, "peak_mb": memory["peak_mb"]}


ENGINES = {"ray": run_ray, "pandas": run_pandas, "polars": run_polars}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.preprocessing")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    parser.add_argument("--child", choices=ENGINES)
    parser.add_argument("--table")
    args = parser.parse_args()
    if args.child:
        config = demo_config(Path(args.table).parent)
        print(json.dumps(ENGINES[args.child](config, args.table)))
        return
    try:
        import polars  # noqa: F401

        engines = list(ENGINES)
    except ImportError:
        engines = ["ray", "pandas"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            uri = str(Path(tmp) / f"events_{size}")
            make_table(uri, size)
            for engine in engines:
                result = child_json(
                    "benchmarks.preprocessing", ["--child", engine, "--table", uri], f"{engine} at {size} rows"
                )
                assert result["rows"] == size, (engine, size, result["rows"])
                rows.append({"engine": engine, "size": size, **result, "rows_per_s": size / result["seconds"]})
                print(
                    f"{engine:>7} {size:>11,} rows: {result['seconds']:7.2f} s, "
                    f"{size / result['seconds']:12,.0f} rows/s, "
                    f"peak {result['peak_mb']:,.0f} MB",
                    flush=True,
                )
            Path(uri).exists() and subprocess.run(["rm", "-rf", uri], check=True)
    speedups = {
        str(r["size"]): r["rows_per_s"]
        / next(p["rows_per_s"] for p in rows if p["engine"] == "pandas" and p["size"] == r["size"])
        for r in rows
        if r["engine"] == "ray"
    }
    lines = [
        "| engine | rows | seconds | rows/s | peak MB | Ray throughput vs pandas |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['engine']} | {r['size']:,} | {r['seconds']:.2f} | {r['rows_per_s']:,.0f} | {r['peak_mb']:,.0f} | "
        + (f"{speedups[str(r['size'])]:.2f}x |" if r["engine"] == "ray" else "|")
        for r in rows
    ]
    fixed = next((r["seconds"] for r in rows if r["engine"] == "ray" and r["size"] == min(args.sizes)), None)
    lines.append(
        f"Ray fixed overhead (time at {min(args.sizes):,} rows): {fixed:.2f} s, plus ray.init "
        f"{next(r['ray_init_s'] for r in rows if r['engine'] == 'ray'):.2f} s"
    )
    write_result("preprocessing", {"rows": rows, "ray_vs_pandas": speedups})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
