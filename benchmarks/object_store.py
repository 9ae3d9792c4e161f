"""Delta on an S3-protocol server (moto's standalone server on loopback, as in the tests) against the
same work on local disk, in one run.

    python -m benchmarks.object_store [--commits 40] [--monitor-commits 1000 [10000]]

1. Appends: 1, 2 and 4 writer processes, each committing --commits appends of 100 prediction-log
   rows through lakeloop's Delta adapter at once; commits per second and commit latency (p50, p95).
   Writers racing for a version on S3 lose the conditional put (412) and retry: the cost of safety.
2. The monitor's read (delta.changes, the change data feed it reads each pass): a predictions table
   of each --monitor-commits count (10 rows a commit, written by 4 processes, as replicas write it);
   the time of a first pass (every row since version 0) and of a steady-state pass (the last 10
   commits), on S3 and on disk. The table is written on disk and then uploaded file by file, so both
   stores read the same table: moto commits about 3 a second here (part 1), so writing 10,000
   commits in place would take about an hour, and part 1 already measures writes in place.

moto is an emulator in the same machine: its latency is not S3's (a real bucket adds ~10-30 ms a
request), so the ratios between writer counts and table sizes carry over, the absolute times do not.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from benchmarks.common import write_result


def rows(writer: int, commit: int, n: int) -> pa.Table:
    return pa.table(
        {
            "request_id": [f"w{writer}-c{commit}"] * n,
            "row": list(range(n)),
            "served_at": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
            "monthly_charges": np.random.default_rng(commit).normal(60, 20, n),
        }
    )


def writer(uri: str, number: int, commits: int, per_commit: int) -> list[float]:
    from pipelines.adapters import delta

    seconds = []
    for commit in range(commits):
        started = time.perf_counter()
        delta.Table(uri).append(rows(number, commit, per_commit), cdf=True)
        seconds.append(time.perf_counter() - started)
    return seconds


def appends(uri: str, writers: int, commits: int, per_commit: int = 100) -> dict:
    from pipelines.adapters import delta

    delta.Table(uri).append(rows(-1, 0, 1), cdf=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("spawn")) as pool:
        latencies = [
            s
            for part in pool.map(writer, [uri] * writers, range(writers), [commits] * writers, [per_commit] * writers)
            for s in part
        ]
    wall = time.perf_counter() - started
    versions = sorted(e["version"] for e in delta.Table(uri).open().history())
    return {
        "writers": writers,
        "commits": writers * commits,
        "commits_per_s": round(writers * commits / wall, 1),
        "rows_per_s": round(writers * commits * per_commit / wall),
        "latency_p50_ms": round(1000 * float(np.median(latencies)), 1),
        "latency_p95_ms": round(1000 * float(np.percentile(latencies, 95)), 1),
        "versions_contiguous": versions == list(range(writers * commits + 1)),
    }


def upload(directory: Path, endpoint: str, bucket: str, prefix: str) -> str:
    """Every file of the table under directory to s3://bucket/prefix (the log's paths are relative)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    files = [path for path in directory.rglob("*") if path.is_file()]
    keys = [f"{prefix}/{path.relative_to(directory).as_posix()}" for path in files]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda f, k: s3.upload_file(str(f), bucket, k), files, keys))
    return f"s3://{bucket}/{prefix}"


def monitor_reads(uri: str) -> dict:
    from pipelines.adapters import delta

    newest = delta.Table(uri).open().version()
    started = time.perf_counter()
    first = delta.Table(uri).changes(None, ["request_id", "row", "served_at"])[0].num_rows
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    steady = delta.Table(uri).changes(newest - 10, ["request_id", "row", "served_at"])[0].num_rows
    steady_s = time.perf_counter() - started
    return {
        "commits": newest,
        "first_pass_rows": first,
        "first_pass_s": round(first_s, 2),
        "steady_pass_rows": steady,
        "steady_pass_s": round(steady_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.object_store")
    parser.add_argument("--commits", type=int, default=40, help="commits per writer in the append test")
    # moto commits about 3 a second here: building a 10,000-commit table takes about an hour, so
    # `make bench` reads 1,000 and the 10,000 case is asked for explicitly
    parser.add_argument("--monitor-commits", type=int, nargs="+", default=[1000])
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the store

    from pipelines.adapters.local_services import stop_pid
    from tests.servers import start_object_store

    with tempfile.TemporaryDirectory() as tmp:
        store = start_object_store(Path(tmp) / "moto.log")
        os.environ.update(store.env)
        try:
            results: dict = {"append": [], "monitor": []}
            for where, base in (("s3", store.uri("bench")), ("local", f"{tmp}/bench")):
                for writers in (1, 2, 4):
                    found = appends(f"{base}/append-{writers}-{uuid.uuid4().hex[:6]}", writers, args.commits)
                    results["append"].append({"store": where, **found})
                    print(where, found, flush=True)
            for commits in args.monitor_commits:
                name = f"predictions-{commits}-{uuid.uuid4().hex[:6]}"
                local = Path(tmp) / name
                appends(str(local), 4, commits // 4, per_commit=10)
                s3 = upload(local, store.endpoint, store.bucket, f"bench/{name}")
                for where, uri in (("s3", s3), ("local", str(local))):
                    found = monitor_reads(uri)
                    results["monitor"].append({"store": where, **found})
                    print(where, found, flush=True)
        finally:
            stop_pid(store.pid)
    print(write_result("object_store", results))


if __name__ == "__main__":
    main()
