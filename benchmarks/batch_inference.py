"""Batch inference: lakeloop's Python API (shipped settings) against single-process pyfunc predict,
on the same Delta table and the same registered model (the default family's).

    python -m benchmarks.batch_inference [--rows 1000000]

Both read the table and score every row in memory (nothing written). The batch API is called twice in
one driver, with the shipped settings (1M rows is within `inline_rows`: scored in the driver) and with
the actor pool forced (`inline_rows` 0: the first call starts the pool, the second finds it warm).
Ray's time excludes `ray.init` (shown separately).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import demo_config, local_ray, peak_memory, registered_model, timed, write_result

TARGET_WARM = 1.0  # a second call at least as fast as one process
TARGET_FIRST = 2.0  # a first call (starting the pool) at most twice one process's time


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
        pool = config.model_copy(
            update={"batch_inference": config.batch_inference.model_copy(update={"inline_rows": 0})}
        )
        calls = {}
        with local_ray() as init_s:
            for label, settings in (("shipped", config), ("actor pool", pool)):

                def call(settings=settings) -> int:
                    scored = predict(uri, model=f"models:/{model.name}/{model.version}", config=settings)
                    return scored.materialize().count()

                with peak_memory() as memory:
                    first, count = timed(call)
                    again, count_again = timed(call)
                assert count == count_again == args.rows
                calls[label] = (first, again, memory["peak_mb"])
    rows = [
        {
            "setup": "single-process pyfunc predict",
            "seconds": single,
            "rows_per_s": args.rows / single,
            "peak_mb": single_memory["peak_mb"],
        }
    ]
    for label, (first_s, again_s, peak) in calls.items():
        for which, seconds in (("first call", first_s), ("second call", again_s)):
            rows.append(
                {
                    "setup": f"lakeloop batch API ({label}), {which}",
                    "seconds": seconds,
                    "rows_per_s": args.rows / seconds,
                    "peak_mb": peak,
                    "ray_init_s": init_s,
                }
            )
    first, parallel, _ = calls["shipped"]
    pool_speedup = single / calls["actor pool"][1]
    speedup, first_ratio = single / parallel, first / single
    lines = ["| setup | seconds | rows/s | peak MB |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['setup']} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | {r['peak_mb']:,.0f} |" for r in rows]
    lines.append(
        f"second call vs single process: {speedup:.2f}x as fast (target >= {TARGET_WARM}x); first call "
        f"{first_ratio:.2f}x single's time (target <= {TARGET_FIRST}x); ray.init {init_s:.1f} s not included; "
        f"the actor pool's second call alone: {pool_speedup:.2f}x"
    )
    write_result(
        "batch_inference",
        {
            "rows": rows,
            "speedup": speedup,
            "first_call_time_ratio": first_ratio,
            "pool_speedup": pool_speedup,
            "table_rows": args.rows,
        },
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
