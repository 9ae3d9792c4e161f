"""Serving load: lakeloop's Serve app behind Ray's default Python proxy vs the bundled HAProxy.

    python -m benchmarks.serve_load [--seconds 10]

Each proxy mode runs in a fresh process (the proxy is chosen when Serve starts) with the real
app: request validation, @serve.batch, the feature pipeline + network, Delta prediction logging.
The model is injected (fitted feature pipeline, untrained network of the shipped shape), so no
registry is needed; scoring cost is the same as a trained model's. The load generator is an async
Python client sharing the same 2 CPUs, which caps what any server can show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = {"tenure_months": 3, "monthly_charges": 80.0, "support_calls": 1, "age": 40, "plan": "basic",
          "contract": "one-year", "region": "north"}  # fmt: skip


async def _load(url: str, concurrency: int, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    body = json.dumps({"dataframe_records": [RECORD]})
    headers = {"content-type": "application/json"}

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"concurrency": concurrency, "requests": len(latencies), "rps": len(latencies) / elapsed,
            "p50_ms": pick(0.5), "p99_ms": pick(0.99), "errors": errors}  # fmt: skip


def _serve_and_measure(proxy: str, seconds: float) -> list[dict]:
    """Runs in a child process: start Ray + Serve, inject a model, measure, shut down."""
    if proxy == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    import httpx
    import ray
    from ray import serve

    from pipelines import delta_tables, synthetic
    from pipelines.config import load_config
    from pipelines.features import FeaturePipeline
    from pipelines.model import NetworkSpec, TabularMLP
    from pipelines.scoring import LakeloopModel
    from pipelines.stack import free_port
    from serve.app import build_deployment
    from serve.model_source import ModelRef

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LAKELOOP_STORAGE_ROOT"] = tmp
        config = load_config(ROOT / "conf" / "lakeloop.yaml")
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
        delta_tables.append(config.table_uri, synthetic.generate(2000, 1))
        pipeline = FeaturePipeline(config.dataset).fit(ray.data.read_delta(config.table_uri))
        hp = config.train.hyperparams
        spec = NetworkSpec(pipeline.output_dim, 2, hp.hidden, hp.depth, hp.dropout)
        model = LakeloopModel(pipeline, spec, TabularMLP(spec).state_dict())

        class Injected:
            def resolve(self, alias: str) -> ModelRef:
                return ModelRef("bench", "1", alias, None)

            def load(self, ref: ModelRef) -> LakeloopModel:
                return model

        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_deployment(config).bind(config.model_dump_json(), Injected()), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        while httpx.get(f"{url}/health").status_code != 200:
            time.sleep(0.5)
        asyncio.run(_load(f"{url}/invocations", 4, 2))  # warm up
        results = [{"proxy": proxy, **asyncio.run(_load(f"{url}/invocations", c, seconds))} for c in (1, 32)]
        serve.shutdown()
        ray.shutdown()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--child", choices=("python", "haproxy"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "serve_load.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_serve_and_measure(args.child, args.seconds)))
        return
    rows = []
    for proxy in ("python", "haproxy"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.serve_load", "--child", proxy, "--seconds",
                               str(args.seconds)], cwd=ROOT, capture_output=True, text=True, check=True)
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    base = {r["concurrency"]: r["rps"] for r in rows if r["proxy"] == "python"}
    lines = ["| proxy | concurrency | req/s | p50 ms | p99 ms | errors | req/s vs python proxy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['proxy']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['errors']} | {r['rps'] / base[r['concurrency']]:.2f}x |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
