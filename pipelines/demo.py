"""Step: the whole loop on one machine, on embedded defaults.

    lakeloop demo [--rows N] [--keep-running]

Starts the embedded stack (an `mlflow server` and a Ray head with the Jobs API, both on loopback),
generates demo data, trains with a small Tune search, promotes, deploys Serve, sends traffic, then
shifts the world: drifted rows land in the events table and drifted traffic reaches the endpoint.
The monitor detects the drift and submits retraining through the Jobs API; the retrained model
goes through the gate, and Serve swaps to it while clients keep sending requests. It ends with a
summary and stops everything it started unless --keep-running.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
from deltalake import DeltaTable

from pipelines import monitor, runtime, stack, synthetic
from pipelines.config import LakeloopConfig
from pipelines.errors import LakeloopError
from pipelines.generate import run as generate_run
from pipelines.steps import StepResult, step_main
from pipelines.train import train_and_register
from pipelines.validate import validate_table

CLIENTS = 8
ROWS_PER_REQUEST = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=20_000, help="rows of demo data per landing (default: 20000)")
    parser.add_argument("--seed", type=int, default=7)
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


class Traffic:
    """Concurrent clients posting 5-row batches to /invocations, counting statuses and versions."""

    def __init__(self, url: str, records: list[dict]) -> None:
        self.url, self.records = url, records
        self.statuses: Counter = Counter()
        self.served_rows = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._budget: int | None = None

    def _client(self, offset: int) -> None:
        with httpx.Client(timeout=60) as http:
            i = offset
            while not self._stop.is_set():
                with self._lock:
                    if self._budget is not None:
                        if self._budget == 0:
                            return
                        self._budget -= 1
                start = (i * ROWS_PER_REQUEST) % (len(self.records) - ROWS_PER_REQUEST)
                batch = self.records[start:start + ROWS_PER_REQUEST]
                try:
                    code = http.post(f"{self.url}/invocations", json={"dataframe_records": batch}).status_code
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                with self._lock:
                    self.statuses[code] += 1
                    self.served_rows += ROWS_PER_REQUEST if code == 200 else 0
                i += CLIENTS

    def send(self, requests: int) -> Counter:
        self._budget = requests
        threads = [threading.Thread(target=self._client, args=(k,)) for k in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.statuses

    def start(self) -> list[threading.Thread]:
        self._budget = None
        threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(CLIENTS // 2)]
        for thread in threads:
            thread.start()
        return threads

    def stop(self, threads: list[threading.Thread]) -> None:
        self._stop.set()
        for thread in threads:
            thread.join()
        self._stop.clear()

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if code != 200)


def _records(rows: int, seed: int, drift: str, features: list[str]) -> list[dict]:
    frame = synthetic.generate(rows, seed, drift).to_pandas()[features]
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def _start_stack(config: LakeloopConfig, keep_running: bool, cleanup: ExitStack) -> tuple[LakeloopConfig, dict]:
    """MLflow server and Ray head as background processes; config pointed at them."""
    root = Path(config.storage.root)
    mlflow_port = 5000 if not stack.port_open(5000) else stack.free_port()
    dashboard_port = 8265 if not stack.port_open(8265) else stack.free_port()
    mlflow_process, mlflow_service = stack.start_mlflow_server(root / "mlflow", mlflow_port)
    try:
        head_process, head_service, info = stack.start_ray_head(root / "ray", dashboard_port, config.ray.num_cpus)
    except LakeloopError:
        stack.stop_pid(mlflow_process.pid)
        raise
    if keep_running:
        state = Path(config.storage.table_uri(stack.STATE_FILE))
        state.write_text(json.dumps([s.__dict__ for s in (mlflow_service, head_service)]))
    else:
        cleanup.callback(stack.stop_pid, mlflow_process.pid)
        cleanup.callback(stack.stop_pid, head_process.pid)
    config = config.model_copy(update={
        "mlflow": config.mlflow.model_copy(update={"tracking_uri": mlflow_service.url}),
        "ray": config.ray.model_copy(update={"address": info["gcs_address"]}),
        "monitor": config.monitor.model_copy(update={"jobs_api": head_service.url}),
    })  # fmt: skip
    return config, {"mlflow": mlflow_service.url, "ray_dashboard": head_service.url}


def _deploy(config: LakeloopConfig) -> str:
    from ray import serve

    from pipelines.deploy import wait_ready
    from serve.app import build_deployment

    port = 8000 if not stack.port_open(8000) else stack.free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_deployment(config).bind(config.model_dump_json()), name="lakeloop", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    if not wait_ready(url, 120):
        raise LakeloopError("the endpoint did not load the champion within 120 s")
    return url


def _wait_for_job(config: LakeloopConfig, submission_id: str, timeout: float = 900) -> dict:
    """Wait for the retraining job; return the JSON summary `pipelines.train --json` printed."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(config.monitor.jobs_api)
    deadline = time.monotonic() + timeout
    while (status := client.get_job_status(submission_id)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                                   JobStatus.STOPPED):
        if time.monotonic() > deadline:
            raise LakeloopError(f"retraining job {submission_id} still {status} after {timeout:.0f} s")
        time.sleep(2)
    logs = client.get_job_logs(submission_id)
    # Progress bars share the log: the JSON summary may follow control characters on its line.
    documents = [line[line.find('{"ok": '):] for line in logs.replace("\r", "\n").splitlines()
                 if '{"ok": ' in line and '"model_version"' in line]
    if status != JobStatus.SUCCEEDED or not documents:
        raise LakeloopError(f"retraining job {submission_id} {status}; last log lines:\n" + "\n".join(logs.splitlines()[-15:]))
    return json.loads(documents[-1])


def _wait_for_version(url: str, version: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{url}/model").json().get("version") == version:
            return True
        time.sleep(0.5)
    return False


def _logged_rows(uri: str, expected: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        logged = DeltaTable(uri).count() if DeltaTable.is_deltatable(uri) else 0
        if logged >= expected or time.monotonic() > deadline:
            return logged
        time.sleep(0.5)


def _p_values(outcome: dict) -> str:
    features = [r for r in outcome["reports"] if r["detector"] == "features"]
    if not features:
        return "-"
    p_values = json.loads(features[-1]["details"])["p_values"]
    top = sorted(p_values.items(), key=lambda kv: kv[1])[:3]
    return ", ".join(f"{name} p={value:.1e}" for name, value in top)


def run(args: argparse.Namespace, config: LakeloopConfig) -> StepResult:
    from ray import serve

    timeline = Timeline()
    features = config.dataset.feature_names
    windows_per_phase = 3
    requests = windows_per_phase * config.monitor.window_rows // ROWS_PER_REQUEST
    with ExitStack() as cleanup:
        config, urls = timeline.run("stack", lambda: _start_stack(config, args.keep_running, cleanup),
                                    lambda r: f"MLflow {r[1]['mlflow']}, Ray {r[1]['ray_dashboard']}")
        landing = argparse.Namespace(table=None, rows=args.rows, seed=args.seed, drift="none")
        timeline.run("generate", lambda: generate_run(landing, config), lambda r: r.summary)
        timeline.run("validate", lambda: validate_table(config), lambda r: f"version {r.version}, {r.rows} rows ok")
        cleanup.enter_context(runtime.ray_session(config))
        first = timeline.run(
            "train + tune", lambda: train_and_register(config, tune=True),
            lambda o: f"version {o.model_version}, test {config.gate.metric} {o.metrics[config.gate.metric]:.3f}, "
                      f"{'promoted' if o.promoted else 'not promoted'}")  # fmt: skip
        url = timeline.run("serve", lambda: _deploy(config), lambda u: f"{u}/docs")
        if not args.keep_running:
            cleanup.callback(serve.shutdown)
        predictions = config.storage.table_uri(config.serving.prediction_log.predictions_table)
        normal = Traffic(url, _records(4000, 101, "none", features))
        timeline.run("traffic", lambda: normal.send(requests), lambda s: dict(s))
        _logged_rows(predictions, normal.served_rows, timeout=30)  # the replicas flush every few seconds
        calm = timeline.run("monitor (calm)", lambda: monitor.run_once(config), monitor.describe)
        shifted = argparse.Namespace(table=None, rows=args.rows, seed=args.seed + 1, drift="covariate")
        timeline.run("drifted data lands", lambda: generate_run(shifted, config), lambda r: r.summary)
        drifted = Traffic(url, _records(4000, 102, "covariate", features))
        timeline.run("drifted traffic", lambda: drifted.send(requests), lambda s: dict(s))
        _logged_rows(predictions, normal.served_rows + drifted.served_rows, timeout=30)
        alarm = timeline.run("monitor (drift)", lambda: monitor.run_once(config), monitor.describe)
        during_swap = drifted.start()
        retrained = None
        if alarm["submission_id"]:
            retrained = timeline.run(
                "retraining job", lambda: _wait_for_job(config, alarm["submission_id"]),
                lambda o: f"version {o['model_version']}, test {config.gate.metric} "
                          f"{o['metrics'][config.gate.metric]:.3f}; {o['reason']}")  # fmt: skip
        swapped = bool(retrained and retrained["promoted"]) and timeline.run(
            "swap", lambda: _wait_for_version(url, retrained["model_version"], 3 * config.serving.poll_interval_s + 30),
            lambda ok: "serving the new champion" if ok else "the endpoint did not swap in time")
        time.sleep(2)  # a little traffic on the new model
        drifted.stop(during_swap)
        serve.delete("lakeloop")  # drain: replicas flush their prediction buffers
        served = normal.served_rows + drifted.served_rows
        logged = _logged_rows(predictions, served, timeout=30)
        if args.keep_running:
            _deploy(config)
    failed = normal.failed + drifted.failed
    serving_version = retrained["model_version"] if swapped else first.model_version
    lines = ["", f"{'stage':<20} {'seconds':>8}", *(f"{n:<20} {s:8.1f}" for n, s, _ in timeline.stages), ""]
    lines += [
        f"before drift       version {first.model_version}: " + _metrics(first.metrics),
        f"after drift        " + (f"version {retrained['model_version']}: " + _metrics(retrained["metrics"])
                                  + f" vs champion " + _metrics(retrained["champion_metrics"] or {})
                                  if retrained else "no retraining"),
        f"drift              calm windows: {_flags(calm)}; shifted windows: {_flags(alarm)}; {_p_values(alarm)}",
        f"retraining         {alarm['submission_id'] or 'not submitted'} "
        + (f"({'promoted' if retrained['promoted'] else 'not promoted'}: {retrained['reason']})" if retrained else ""),
        f"serving            version {serving_version}",
        f"requests           {sum((normal.statuses + drifted.statuses).values())} sent, {failed} failed",
        f"predictions        {served} rows served, {logged} logged to Delta",
        f"MLflow UI          {urls['mlflow']}",
        f"Ray dashboard      {urls['ray_dashboard']}",
        "still running: `lakeloop stack down` stops it" if args.keep_running else "everything started was stopped",
    ]
    data = {
        "stages": [{"stage": n, "seconds": s, "detail": d} for n, s, d in timeline.stages],
        "first_version": first.model_version, "first_metrics": first.metrics, "first_promoted": first.promoted,
        "calm_drift": [w["drift"] for w in calm["windows"]], "shifted_drift": [w["drift"] for w in alarm["windows"]],
        "submission_id": alarm["submission_id"], "monitor_seconds": alarm["seconds"], "retrained": retrained,
        "swapped": swapped,
        "serving_version": serving_version, "failed_requests": failed, "served_rows": served, "logged_rows": logged,
        **urls,
    }  # fmt: skip
    ok = failed == 0 and served == logged and alarm["submitted"] and retrained is not None
    return StepResult("\n".join(lines), data, exit_code=0 if ok else 1)


def _metrics(scores: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if k in ("roc_auc", "accuracy", "rmse", "r2"))


def _flags(outcome: dict) -> str:
    return " ".join("drift" if w["drift"] else "-" if w["drift"] is None else "ok" for w in outcome["windows"]) or "none"


def main(argv: list[str] | None = None) -> None:
    step_main("python -m pipelines.demo", add_arguments, run, argv)


if __name__ == "__main__":
    main()
