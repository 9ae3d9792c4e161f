"""Online serving: the same registered model behind lakeloop's Serve app and the alternatives.

    python -m benchmarks.serve_load [--seconds 8] [--concurrency 1 8 32]

Servers: lakeloop's Serve app as shipped (HAProxy ingress, conf/serve.yaml's deployment options,
request validation, @serve.batch, Delta prediction logging), the same app behind Ray's default
Python proxy, with two replicas from the start, and with smaller batches (the alternatives the
shipped defaults are chosen against), `mlflow models serve` with 1 and 2 workers, and a bare FastAPI/uvicorn app loading
the same pyfunc. The model is registered in a real `mlflow server`; the others load the same
artifact from disk. The load generator is an async Python client (wrk is not installed here)
sharing the same 2 CPUs, which caps what any server can show.
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

from benchmarks.common import RECORD, ROOT, registered_model, write_result

# The shipped configuration and the alternatives its defaults were chosen against.
SERVE_MODES = {
    "serve (HAProxy, shipped)": {},
    "serve (Python proxy)": {"haproxy": False},
    "serve (HAProxy, 2 replicas from the start)": {"min_replicas": 2},
    "serve (HAProxy, max_batch_size 8)": {"max_batch_size": 8},
}
SHIPPED = "serve (HAProxy, shipped)"


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
                ok = (await client.post(url, content=body, headers=headers)).status_code == 200
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
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pick(0.5),
        "p99_ms": pick(0.99),
        "errors": errors,
    }


def sweep(server: str, url: str, concurrencies: list[int], seconds: float) -> list[dict]:
    asyncio.run(_load(url, 4, 2))  # warm up
    return [{"server": server, **asyncio.run(_load(url, c, seconds))} for c in concurrencies]


def _wait_until_up(url: str, path: str, timeout: float = 180) -> None:
    from pipelines.adapters.serving import wait_ready

    if not wait_ready(url, timeout, path):
        raise TimeoutError(f"{url}{path} did not answer 200 within {timeout} s")


def serve_child(mode: str, tracking_uri: str, seconds: float, concurrencies: list[int]) -> list[dict]:
    """In a fresh process (the proxy is chosen when Serve starts): Ray, Serve, load, shut down."""
    variant = SERVE_MODES[mode]
    if variant.get("haproxy", True):
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    import ray
    from ray import serve

    from benchmarks.common import demo_config, deploy_shipped
    from pipelines.adapters import serving
    from pipelines.adapters.local_services import free_port

    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config(Path(tmp), tracking_uri)
        if "max_batch_size" in variant:
            config = config.model_copy(
                update={"serving": config.serving.model_copy(update={"max_batch_size": variant["max_batch_size"]})}
            )
        shipped = serving.load_serve_config(ROOT / "conf" / "serve.yaml")["applications"][0]["deployments"][0]
        overrides = {}
        if "min_replicas" in variant:
            overrides["autoscaling_config"] = {**shipped["autoscaling_config"], "min_replicas": variant["min_replicas"]}
        context = ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=free_port(),
            logging_level="ERROR",
        )
        url = deploy_shipped(config, f"http://{context.dashboard_url}", free_port(), "bench", "/", **overrides)
        _wait_until_up(url, "/health")
        rows = sweep(mode, f"{url}/invocations", concurrencies, seconds)
        serve.shutdown()
        ray.shutdown()
    return rows


def process_server(
    name: str, command: list[str], port: int, env: dict, concurrencies: list[int], seconds: float
) -> list[dict]:
    from pipelines.adapters.local_services import stop_pid

    process = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_until_up(f"http://127.0.0.1:{port}", "/ping")
        return sweep(name, f"http://127.0.0.1:{port}/invocations", concurrencies, seconds)
    finally:
        stop_pid(process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_load")
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--child", choices=list(SERVE_MODES))
    parser.add_argument("--tracking-uri")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(serve_child(args.child, args.tracking_uri, args.seconds, args.concurrency)))
        return

    from pipelines.adapters.local_services import free_port

    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp, registered_model(Path(tmp)) as model:
        for mode in SERVE_MODES:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.serve_load",
                    "--child",
                    mode,
                    "--tracking-uri",
                    model.tracking_uri,
                    "--seconds",
                    str(args.seconds),
                    "--concurrency",
                    *map(str, args.concurrency),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise SystemExit(f"{mode} failed:\n{done.stderr[-3000:]}")
            rows += json.loads(done.stdout.strip().splitlines()[-1])
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "BENCH_MODEL_DIR": str(model.local_dir),
        }
        for workers in (1, 2):
            port = free_port()
            rows += process_server(
                f"mlflow models serve ({workers} worker{'s' if workers > 1 else ''})",
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "models",
                    "serve",
                    "-m",
                    str(model.local_dir),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-w",
                    str(workers),
                    "--env-manager",
                    "local",
                ],
                port,
                env,
                args.concurrency,
                args.seconds,
            )
        port = free_port()
        rows += process_server(
            "bare FastAPI/uvicorn (1 worker)",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "benchmarks.bare_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            port,
            env,
            args.concurrency,
            args.seconds,
        )

    def at(server: str, c: int) -> dict:
        return next(r for r in rows if r["server"] == server and r["concurrency"] == c)

    shipped, mlflow1, bare = SHIPPED, "mlflow models serve (1 worker)", "bare FastAPI/uvicorn (1 worker)"
    high, low = max(args.concurrency), min(args.concurrency)
    targets = {
        f"c={high}: shipped Serve req/s vs mlflow models serve (1 worker), target >= 2x": at(shipped, high)["rps"]
        / at(mlflow1, high)["rps"],
        f"c={high}: shipped Serve p99 vs mlflow models serve (1 worker), target < 1x": at(shipped, high)["p99_ms"]
        / at(mlflow1, high)["p99_ms"],
        f"c={low}: shipped Serve p50 vs bare uvicorn, target <= 2x": at(shipped, low)["p50_ms"]
        / at(bare, low)["p50_ms"],
    }
    lines = ["| server | concurrency | req/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [
        f"| {r['server']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
        f"{r['errors']} |"
        for r in rows
    ]
    lines += ["", *(f"{name}: {value:.2f}x" for name, value in targets.items())]
    write_result("serve_load", {"rows": rows, "ratios": targets, "seconds_per_point": args.seconds})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
