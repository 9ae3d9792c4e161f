"""Step: the loop on embedded defaults, as far as it is built.

    lakeloop demo [--rows N] [--keep-running]

Starts an `mlflow server` on loopback and a local Ray cluster, generates demo data, validates it,
trains with a small Tune search, gates and registers the model, deploys the Serve endpoint, sends
concurrent traffic (then drifted traffic), checks that every served row reached the Delta
predictions table, and prints a summary. Without --keep-running it stops everything it started.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
from deltalake import DeltaTable

from pipelines import runtime, stack, synthetic
from pipelines.config import LakeloopConfig
from pipelines.generate import run as generate_run
from pipelines.steps import StepResult, step_main
from pipelines.train import train_and_register
from pipelines.validate import validate_table

TRAFFIC_CLIENTS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="rows of demo data (default: 20000)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=400, help="HTTP requests per traffic phase (default: 400)")
    parser.add_argument("--keep-running", action="store_true", help="leave MLflow, Ray and Serve running")


class Timeline:
    def __init__(self) -> None:
        self.stages: list[tuple[str, float, str]] = []

    def run(self, name: str, fn, describe=lambda result: ""):
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        self.stages.append((name, seconds, describe(result)))
        print(f"[{name}] {seconds:6.1f}s  {describe(result)}", flush=True)
        return result


def send_traffic(url: str, frames: list[dict], requests: int) -> Counter:
    """Concurrent clients posting 5-row batches to /invocations; returns status counts."""
    statuses: Counter = Counter()
    lock = threading.Lock()
    cursor = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            for i in cursor:
                batch = frames[(i * 5) % len(frames):][:5] or frames[:5]
                try:
                    code = http.post(f"{url}/invocations", json={"dataframe_records": batch}).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with lock:
                    statuses[code] += 1

    threads = [threading.Thread(target=client) for _ in range(TRAFFIC_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def _records(rows: int, seed: int, drift: str, features: list[str]) -> list[dict]:
    frame = synthetic.generate(rows, seed, drift).to_pandas()[features]
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _start_stack(config: LakeloopConfig, keep_running: bool, cleanup: ExitStack) -> tuple[LakeloopConfig, str]:
    """An mlflow server (and, to outlive this process, a Ray head); config pointed at them."""
    root = Path(config.storage.root)
    if keep_running:
        result = stack.run(argparse.Namespace(down=False, mlflow_port=5000, dashboard_port=8265), config)
        print(result.summary, flush=True)
        mlflow_url = result.data["services"][0]["url"]
        ray_config = config.ray.model_copy(update={"address": result.data["gcs_address"]})
    else:
        process, service = stack.start_mlflow_server(root / "mlflow", stack.free_port())
        cleanup.callback(stack.stop_pid, process.pid)
        mlflow_url, ray_config = service.url, config.ray
    return config.model_copy(update={"mlflow": config.mlflow.model_copy(update={"tracking_uri": mlflow_url}),
                                     "ray": ray_config}), mlflow_url


def _wait_logged(uri: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        logged = DeltaTable(uri).count() if DeltaTable.is_deltatable(uri) else 0
        if logged >= expected or time.monotonic() > deadline:
            return logged
        time.sleep(0.5)


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from ray import serve

    from serve.app import build_deployment

    timeline = Timeline()
    with ExitStack() as cleanup:
        config, mlflow_url = timeline.run("stack", lambda: _start_stack(config, args.keep_running, cleanup),
                                          lambda r: f"MLflow {r[1]}")
        generate_args = argparse.Namespace(table=None, rows=args.rows, seed=args.seed, drift="none")
        timeline.run("generate", lambda: generate_run(generate_args, config), lambda r: r.summary)
        timeline.run("validate", lambda: validate_table(config), lambda r: f"version {r.version}, {r.rows} rows ok")
        cleanup.enter_context(runtime.ray_session(config))
        outcome = timeline.run(
            "train + tune", lambda: train_and_register(config, tune=True),
            lambda o: f"version {o.model_version} test {config.gate.metric} {o.metrics[config.gate.metric]:.3f}; "
                      f"{'promoted' if o.promoted else 'not promoted'}: {o.reason}")  # fmt: skip
        port = 8000 if not stack.port_open(8000) else stack.free_port()
        url = f"http://127.0.0.1:{port}"

        def deploy() -> str:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_deployment(config).bind(config.model_dump_json()), name="lakeloop", route_prefix="/")
            from pipelines.deploy import wait_ready

            if not wait_ready(url, 120):
                raise RuntimeError("the endpoint did not load the champion within 120s")
            return url

        timeline.run("serve", deploy, lambda u: f"{u}/docs")
        if not args.keep_running:
            cleanup.callback(serve.shutdown)
        features = config.dataset.feature_names
        normal = timeline.run("traffic", lambda: send_traffic(url, _records(2000, 101, "none", features), args.requests),
                              lambda s: dict(s))
        drifted = timeline.run("drifted traffic",
                               lambda: send_traffic(url, _records(2000, 102, "covariate", features), args.requests),
                               lambda s: dict(s))  # fmt: skip
        served = 5 * (normal.get(200, 0) + drifted.get(200, 0))
        predictions = config.storage.table_uri(config.serving.prediction_log.predictions_table)
        if not args.keep_running:
            serve.delete("lakeloop")  # drain: the replicas flush their prediction buffers
        logged = _wait_logged(predictions, served, timeout=30)
        failed = sum(n for code, n in (normal + drifted).items() if code != 200)

    lines = ["", f"{'stage':<16} {'seconds':>8}", *(f"{n:<16} {s:8.1f}" for n, s, _ in timeline.stages)]
    lines += [
        "",
        f"model            {config.mlflow.registered_model} version {outcome.model_version} "
        f"({'champion' if outcome.promoted else 'challenger'})",
        f"test metrics     " + ", ".join(f"{k}={v:.3f}" for k, v in outcome.metrics.items()),
        f"requests         {sum((normal + drifted).values())} sent, {failed} failed",
        f"predictions      {served} served, {logged} logged to {predictions}",
        f"MLflow UI        {mlflow_url}" + (" (still running: `lakeloop stack down` stops it)" if args.keep_running else " (stopped)"),
        "drift monitoring and automatic retraining: not built yet (issue 5)",
    ]
    data = {
        "stages": [{"stage": n, "seconds": s, "detail": d} for n, s, d in timeline.stages],
        "model_version": outcome.model_version, "promoted": outcome.promoted, "metrics": outcome.metrics,
        "failed_requests": failed, "served_rows": served, "logged_rows": logged, "mlflow_url": mlflow_url,
    }  # fmt: skip
    return StepResult("\n".join(lines), data, exit_code=0 if failed == 0 and served == logged else 1)


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.demo", add_arguments, run, argv)


if __name__ == "__main__":
    main()
