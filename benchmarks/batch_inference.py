"""Batch inference: lakeloop's Python API (Ray Data actor pool, shipped settings) against
single-process pyfunc predict, on the same Delta table and the same registered model.

    python -m benchmarks.batch_inference [--rows 1000000]

Both read the table and score every row in memory (nothing written). Ray's time excludes
`ray.init` (shown separately).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import demo_config, local_ray, peak_memory, registered_model, timed, write_result

TARGET_SPEEDUP = 1.2  # issue 12: the actor pool at least 1.2x single-process pyfunc at 1M rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch_inference")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-size", type=int, help="override batch_inference.batch_size (default: the shipped config)"
    )
    args = parser.parse_args()

    import mlflow.pyfunc
    from deltalake import DeltaTable

    from benchmarks.preprocessing import make_table
    from pipelines.inference.scoring import predict

    with tempfile.TemporaryDirectory() as tmp, registered_model(Path(tmp)) as model:
        config = demo_config(Path(tmp) / "data", model.tracking_uri)
        if args.batch_size:
            config = config.model_copy(
                update={"batch_inference": config.batch_inference.model_copy(update={"batch_size": args.batch_size})}
            )
        uri = str(Path(tmp) / "score_me")
        make_table(uri, args.rows)
        with peak_memory() as single_memory:
            started = time.perf_counter()
            frame = DeltaTable(uri).to_pandas(columns=config.dataset.feature_names)
            scored = mlflow.pyfunc.load_model(str(model.local_dir)).predict(frame)
            single = time.perf_counter() - started
        assert len(scored) == args.rows
        del frame, scored
        with local_ray() as init_s, peak_memory() as ray_memory:
            parallel, count = timed(
                lambda: predict(uri, model=f"models:/{model.name}/{model.version}", config=config).materialize().count()
            )
        assert count == args.rows
    rows = [
        {
            "setup": "single-process pyfunc predict",
            "seconds": single,
            "rows_per_s": args.rows / single,
            "peak_mb": single_memory["peak_mb"],
        },
        {
            "setup": "lakeloop batch API (Ray Data actor pool)",
            "seconds": parallel,
            "rows_per_s": args.rows / parallel,
            "peak_mb": ray_memory["peak_mb"],
            "ray_init_s": init_s,
        },
    ]
    speedup = single / parallel
    lines = ["| setup | seconds | rows/s | peak MB |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['setup']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['peak_mb']:,.0f} |" for r in rows]
    lines.append(
        f"batch API vs single process: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x); "
        f"ray.init {init_s:.1f} s not included"
    )
    write_result("batch_inference", {"rows": rows, "speedup": speedup, "table_rows": args.rows})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
