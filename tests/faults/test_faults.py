"""Faults injected into a running stack, started as a user starts it (`lakeloop stack up`, `lakeloop
train`, `lakeloop serve` with two replicas, and `lakeloop monitor` looping through all of it):
replicas SIGKILLed under load, the predictions table unwritable, the MLflow server killed, the Jobs
API unreachable or silent, and fuzzed input. Each test prints its figures and adds them to
bench-results/faults.json, which is where the README's Reliability table comes from.

The tests of this module run in order against one stack (starting it takes minutes on 2 cores); the
last one checks what the monitor did through every fault before it."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import mlflow
import pandas as pd
import pyarrow.compute as pc
import pytest
import yaml
from mlflow import MlflowClient

from pipelines.adapters import delta, ray_serve
from pipelines.adapters.local_services import (
    STATE_FILE,
    StackState,
    free_port,
    ray_auth_headers,
    start_mlflow_server,
    stop_pid,
)
from pipelines.adapters.log_spool import SEGMENT_SUFFIX
from pipelines.adapters.prediction_log import MODEL_VERSION, REQUEST_ID, ROW
from pipelines.adapters.registry import ModelRef, Registry
from pipelines.core.config import LakeloopConfig, MonitorConfig, RayConfig, parse_config
from pipelines.core.gate import GateDecision
from pipelines.scenarios import synthetic
from pipelines.training.detectors import PERFORMANCE
from tests.helpers import ROOT, alive, demo_raw_config, lakeloop, tmpfs, user_environment, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, pytest.mark.own_cluster]

RESULTS = ROOT / "bench-results" / "faults.json"
ROWS_PER_REQUEST = 2
FEATURES = parse_config(demo_raw_config(Path("unused"))).dataset.feature_names


def record(name: str, figures: dict) -> None:
    print(f"\n[faults] {name}: {json.dumps(figures)}", flush=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = figures
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


@dataclass
class Stack:
    home: Path
    env: dict
    config: LakeloopConfig  # with the stack's MLflow server and dashboard
    url: str = "http://127.0.0.1:8000"  # conf/serve.yaml's port
    started: list[int] = field(default_factory=list)  # processes this module started itself (by pid)

    @property
    def root(self) -> Path:
        return Path(self.config.storage.root)

    @property
    def state(self) -> StackState:
        state = StackState.read(self.root / STATE_FILE)
        assert state is not None
        return state

    @property
    def predictions(self) -> str:
        return self.config.storage.resolve(self.config.serving.prediction_log.predictions_table)


def two_replicas(path: Path) -> Path:
    """conf/serve.yaml with a fixed two replicas instead of autoscaling (a replica is killed while the
    other serves)."""
    serve_config = yaml.safe_load((ROOT / "conf" / "serve.yaml").read_text())
    deployment = serve_config["applications"][0]["deployments"][0]
    deployment.pop("autoscaling_config", None)
    deployment["num_replicas"] = 2
    path.write_text(yaml.safe_dump(serve_config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("faults")
    raw = demo_raw_config(home / "data")
    raw["ray"].update(request_timeout_s=5)
    raw["train"].update(max_epochs=2)
    raw["serving"].update(poll_interval_s=1)
    raw["serving"]["prediction_log"].update(flush_rows=200, flush_interval_s=1.0)
    raw["monitor"].update(window_rows=500, interval_s=5, retries=1)  # fewer windows: the faults land ~40k rows
    env = user_environment(raw, home)
    up = lakeloop("stack", "up", "--mlflow-port", str(free_port()), "--dashboard-port", str(free_port()), env=env)
    assert up.returncode == 0, up.stderr[-3000:]
    stack = None
    try:
        for step in (
            ("data", "generate", "--rows", "3000"),
            ("train",),
            ("serve", "--serve-config", str(two_replicas(home / "serve.yaml"))),
        ):
            done = lakeloop(*step, env=env)
            assert done.returncode == 0, f"lakeloop {' '.join(step)}: {done.stderr[-3000:]}"
        state = StackState.read(home / "data" / STATE_FILE)
        config = parse_config(raw)
        config = config.model_copy(
            update={
                "mlflow": config.mlflow.model_copy(update={"tracking_uri": state.mlflow_url}),
                "ray": config.ray.model_copy(update={"address": state.gcs_address, "dashboard": state.dashboard_url}),
            }
        )
        stack = Stack(home, env, config)
        yield stack
    finally:
        down = lakeloop("stack", "down", env=env)
        for pid in stack.started if stack else []:
            stop_pid(pid)
        assert down.returncode == 0, down.stderr[-3000:]


@pytest.fixture(scope="module")
def monitor(stack: Stack) -> Iterator[subprocess.Popen]:
    """`lakeloop monitor` looping (every monitor.interval_s) through every fault of the module; it
    reports drift but leaves submitting to the monitors test_jobs_api_outage starts."""
    log = (stack.home / "monitor.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "monitor", "--no-submit"],
        cwd=ROOT,
        env=stack.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack.started.append(process.pid)
    yield process
    stop_pid(process.pid)
    log.close()


def request_rows(n: int, seed: int, shift: float = 0.0, per_request: int = ROWS_PER_REQUEST) -> list[list[dict]]:
    """n rows of the demo data as requests of `per_request` rows; `shift` is added to monthly_charges."""
    frame = synthetic.generate(n, seed).to_pandas()[FEATURES]
    frame["monthly_charges"] = frame["monthly_charges"] + shift
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [records[i : i + per_request] for i in range(0, len(records), per_request)]


@dataclass
class Answer:
    at: float
    status: int  # 0: no HTTP answer (connection reset or refused)
    request_id: str | None
    rows: int
    error: str = ""  # the client's exception when there was no HTTP answer
    retry_after: str | None = None


class Load:
    """`clients` threads posting /predict back to back until stopped; every answer is kept."""

    def __init__(self, url: str, clients: int, seed: int = 0, per_request: int = ROWS_PER_REQUEST) -> None:
        self.url, self.clients = url, clients
        self.requests = request_rows(max(2000, 20 * per_request), seed, per_request=per_request)
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _client(self, number: int) -> None:
        picker = random.Random(number)
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                body = picker.choice(self.requests)
                try:
                    response = client.post("/predict", json={"records": body})
                    status = response.status_code
                    request_id = response.json()["request_id"] if status == 200 else None
                    error, retry_after = "", response.headers.get("retry-after")
                except httpx.HTTPError as exc:
                    status, request_id, error, retry_after = 0, None, type(exc).__name__, None
                self.answers.append(Answer(time.monotonic(), status, request_id, len(body), error, retry_after))

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=90)

    def served(self) -> dict[str, int]:
        return {a.request_id: a.rows for a in self.answers if a.status == 200}

    def failed(self, start: float = 0.0, end: float = float("inf")) -> list[Answer]:
        return [a for a in self.answers if a.status != 200 and start <= a.at <= end]

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.at <= end]


def logged_keys(table_uri: str) -> pd.DataFrame:
    table = delta.Table(table_uri).read(columns=[REQUEST_ID, ROW])
    return pd.DataFrame(columns=[REQUEST_ID, ROW]) if table is None else table.to_pandas()


def check_every_served_row_logged(
    stack: Stack, served: dict[str, int], timeout: float = 120, table_uri: str | None = None
) -> dict:
    """Wait for the served rows to land (in the stack's predictions table, or `table_uri`); the
    figures: served, lost, duplicated."""
    expected = sum(served.values())

    def landed() -> pd.DataFrame:
        keys = logged_keys(table_uri or stack.predictions)
        return keys[keys[REQUEST_ID].isin(served.keys())]

    wait_for(lambda: len(landed()) >= expected, timeout, every=1.0)
    keys = landed()
    lost = expected - len(keys.drop_duplicates())
    return {
        "rows_served": expected,
        "rows_logged": len(keys),
        "rows_lost": lost,
        "rows_duplicated": len(keys) - len(keys.drop_duplicates()),
    }


def replica_pids(stack: Stack, running_only: bool = False) -> list[int]:
    """The pids of the app's replicas, from Serve's REST API (as `serve status` reads it); with
    `running_only`, only those Serve routes to (a starting replica is still loading its model)."""
    details = httpx.get(
        f"{stack.config.ray.dashboard}/api/serve/applications/", headers=ray_auth_headers(), timeout=30
    ).json()
    replicas = details["applications"]["lakeloop"]["deployments"]["ModelServer"]["replicas"]
    return sorted(r["pid"] for r in replicas if r.get("pid") and (r["state"] == "RUNNING" or not running_only))


def rss_mb(pid: int) -> float:
    """Resident memory of a live process; 0 once it has gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_fuzzing_the_running_app_gets_no_5xx_and_refused_requests_log_nothing(stack: Stack, monitor) -> None:
    """schemathesis, from the app's own OpenAPI document: examples, coverage (boundary and invalid
    values of every field) and random fuzzing of every route. The hand-written hostile bodies (size,
    nesting, NaN, lone surrogates, huge numbers, wrong types) are tests/integration/test_serving.py's."""
    before = len(logged_keys(stack.predictions))
    report = stack.home / "fuzz.har"
    fuzz = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{stack.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "60",
            "--seed",
            "13",
            "--workers",
            "2",
            "--request-timeout",
            "30",
            "--generation-database",
            "none",
            "--report",
            "har",
            "--report-har-path",
            str(report),
            "--no-color",
        ],
        cwd=stack.home,
        capture_output=True,
        text=True,
        timeout=900,
    )
    entries = json.loads(report.read_text())["log"]["entries"]
    statuses = [e["response"]["status"] for e in entries]
    scored = 0
    for entry in entries:
        if entry["response"]["status"] == 200 and entry["request"]["url"].endswith(("/predict", "/invocations")):
            scored += len(json.loads(entry["response"]["content"]["text"])["predictions"])
    wait_for(lambda: len(logged_keys(stack.predictions)) - before >= scored, 60, every=1.0)
    logged = len(logged_keys(stack.predictions)) - before
    figures = {
        "requests": len(statuses),
        "2xx": sum(200 <= s < 300 for s in statuses),
        "4xx": sum(400 <= s < 500 for s in statuses),
        "5xx": sum(s >= 500 for s in statuses),
        "rows_scored": scored,
        "rows_logged": logged,
    }
    record("fuzz", figures)
    assert fuzz.returncode == 0, fuzz.stdout[-4000:]
    assert figures["5xx"] == 0 and figures["requests"] >= 200
    assert logged == scored  # rows of refused requests were not logged, rows of scored ones were


def kill_replicas(stack: Stack, count: int, give_up_s: float, after_kill=lambda: None) -> list[tuple[float, int]]:
    """A replica SIGKILLed every 10 s (or as soon as the last victim's replacement is serving, which
    takes longer here: it loads the model before Serve routes to it) until `count` kills; `after_kill`
    runs right after each. Returns (time, pid) of each kill."""
    kills: list[tuple[float, int]] = []
    skipped = 0
    give_up = time.monotonic() + give_up_s
    while len(kills) < count and time.monotonic() < give_up:
        time.sleep(10 if not skipped else 1)  # the fault's schedule: one kill every 10 s at most
        # Serve's API can still list the last victim as RUNNING until its health check notices
        # (CI saw that pid again): only live processes not yet killed count as replicas.
        killed = {pid for _, pid in kills}
        pids = [p for p in replica_pids(stack, running_only=True) if p not in killed and alive(p)]
        if len(pids) < 2:  # the last kill's replacement is not up yet: never kill the only replica
            skipped += 1
            continue
        victim = random.Random(len(kills)).choice(pids)
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:  # it died between the check and the kill: look again
            skipped += 1
            continue
        skipped = 0
        kills.append((time.monotonic(), victim))
        after_kill()
    return kills


def test_killing_a_replica_every_10_s_under_load_loses_no_row(stack: Stack, monitor) -> None:
    """8 replica kills under 4 clients."""
    with Load(stack.url, clients=4) as load:
        kills = kill_replicas(stack, 8, 400)
        time.sleep(10)  # load after the last kill
    figures = {
        "kills": len(kills),
        "seconds": round(kills[-1][0] - kills[0][0], 1) if kills else 0,
        "requests": len(load.answers),
        "failed": len(load.failed()),
        "failed_pct": round(100 * len(load.failed()) / max(len(load.answers), 1), 3),
        "failures_by_status": {str(k): v for k, v in sorted(Counter(a.status for a in load.failed()).items())},
        "connection_errors": dict(Counter(a.error for a in load.failed() if a.error)),
        **check_every_served_row_logged(stack, load.served()),
    }
    record("replica_kills", figures)
    assert figures["kills"] >= 8
    assert figures["rows_lost"] == 0 and figures["rows_duplicated"] == 0
    assert figures["failed_pct"] <= 0.5


def spooled_rows(stack: Stack, table_uri: str) -> set[tuple[str, int]]:
    """(request id, row) of every row in the table's spool segments on this node now: rows a replica
    wrote to disk and had not committed yet (a line cut short by a kill is not a row)."""
    found: set[tuple[str, int]] = set()
    for segment in (stack.config.spool_dir / delta.table_key(table_uri)).glob(f"*/*{SEGMENT_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):  # committed and deleted meanwhile
            for line in segment.read_bytes().splitlines():
                with contextlib.suppress(ValueError):
                    row = json.loads(line)
                    found.add((row[REQUEST_ID], row[ROW]))
    return found


def registered_copy_of_the_champion(stack: Stack) -> str:
    """A new version of the champion's run (a candidate that loads and scores like it)."""
    config = stack.config
    champion = MlflowClient(config.mlflow.tracking_uri).get_model_version_by_alias(
        config.mlflow.registered_model, config.serving.alias
    )
    mlflow.set_tracking_uri(config.mlflow.tracking_uri)
    return str(mlflow.register_model(f"runs:/{champion.run_id}/model", config.mlflow.registered_model).version)


def test_replicas_killed_in_shadow_lose_no_logged_row_of_either_role(stack: Stack, monitor) -> None:
    """A candidate in shadow (`lakeloop model shadow`) and 3 replica kills under 4 clients: every
    answered row lands in the predictions table once, and every candidate row a replica had spooled
    (read from the spool right after each kill) lands in the shadow table once. Shadow rows are scored
    after the answer: a killed replica's last ~20 ms of answers, and a replacement's answers before
    it has loaded the candidate, have none (counted)."""
    two_live_replicas(stack)
    version = registered_copy_of_the_champion(stack)
    shadow_uri = stack.config.storage.resolve(stack.config.serving.prediction_log.shadow_table)
    shadow = lakeloop("model", "shadow", version, env=stack.env)
    assert shadow.returncode == 0, shadow.stderr[-3000:]

    def candidate_everywhere() -> bool:  # 8 answers from 2 replicas picked at random: both, almost surely
        described = [httpx.get(f"{stack.url}/model", timeout=10).json().get("candidate") or {} for _ in range(8)]
        return all(c.get("version") == version for c in described)

    try:
        assert wait_for(candidate_everywhere, 120, every=1.0), "the replicas did not load the candidate"
        spooled: set[tuple[str, int]] = set()
        with Load(stack.url, clients=4, seed=3) as load:
            kills = kill_replicas(stack, 3, 200, lambda: spooled.update(spooled_rows(stack, shadow_uri)))
            time.sleep(10)  # load after the last kill
        served = load.served()
        figures = {
            "kills": len(kills),
            "requests": len(load.answers),
            "failed": len(load.failed()),
            **check_every_served_row_logged(stack, served),
        }

        def candidate_rows() -> pd.DataFrame:
            table = delta.Table(shadow_uri).read([REQUEST_ID, ROW], pc.field(MODEL_VERSION) == version)
            return pd.DataFrame(columns=[REQUEST_ID, ROW]) if table is None else table.to_pandas()

        def landed() -> set[tuple[str, int]]:
            return set(candidate_rows().itertuples(index=False, name=None))

        wait_for(lambda: spooled <= landed(), 120, every=1.0)
        rows = candidate_rows()
        answered = rows[rows[REQUEST_ID].isin(served)]
        figures.update(
            shadow_rows_in_spools_at_kills=len(spooled),
            shadow_spooled_lost=len(spooled - landed()),
            shadow_rows_duplicated=len(rows) - len(rows.drop_duplicates()),
            shadow_rows_missing=figures["rows_served"] - len(answered.drop_duplicates()),
            shadow_missing_pct=round(100 * (1 - len(answered.drop_duplicates()) / max(figures["rows_served"], 1)), 2),
        )
    finally:
        retired = lakeloop("model", "retire", env=stack.env)
    record("shadow_replica_kills", figures)
    assert retired.returncode == 0, retired.stderr[-3000:]
    assert figures["kills"] == 3 and figures["shadow_rows_in_spools_at_kills"] > 0
    assert figures["rows_lost"] == 0 and figures["rows_duplicated"] == 0
    assert figures["shadow_spooled_lost"] == 0 and figures["shadow_rows_duplicated"] == 0
    assert figures["shadow_missing_pct"] < 2  # only the rows a replica answered just before its kill (0.11% here)
    assert figures["failed"] <= 0.005 * figures["requests"]


@contextlib.contextmanager
def unwritable(table_uri: str) -> Iterator[None]:
    """The table's transaction log replaced by a file: every read and commit fails (as on storage
    that refuses writes), whoever runs the process; then put back as it was."""
    log_dir = Path(table_uri) / "_delta_log"
    aside = log_dir.with_name("_delta_log.outage")
    log_dir.rename(aside)
    log_dir.write_text("storage outage injected by tests/faults")
    try:
        yield
    finally:
        log_dir.unlink()
        aside.rename(log_dir)


def two_live_replicas(stack: Stack) -> list[int]:
    """The two replicas' distinct pids, once Serve routes to both and both processes are alive (just
    after the kill test, Serve's API listed one pid twice while a replacement started)."""
    found: list[int] = []

    def ready() -> bool:
        found[:] = sorted(set(replica_pids(stack, running_only=True)))
        return len(found) == 2 and all(alive(pid) for pid in found)

    assert wait_for(ready, 180, every=1.0), f"two live replicas: {found}"
    return found


def test_a_60_s_storage_outage_keeps_serving_bounds_memory_and_loses_no_row(stack: Stack, monitor) -> None:
    pids = two_live_replicas(stack)
    samples: dict[int, list[float]] = {pid: [] for pid in pids}
    pending_peak, spooled_peak = 0, 0

    def sample() -> None:
        nonlocal pending_peak, spooled_peak
        time.sleep(5)
        replicas = [httpx.get(f"{stack.url}/model", timeout=10).json()["log"]["predictions"] for _ in range(4)]
        pending_peak = max(pending_peak, *(r["pending"] for r in replicas))
        spooled_peak = max(spooled_peak, *(r["spooled_bytes"] for r in replicas))
        for pid in pids:
            samples[pid].append(round(rss_mb(pid), 1))

    with Load(stack.url, clients=2, seed=1) as load:
        # The same load with storage up first: a replica started by the kill tests just before grows
        # by tens of MB over its first requests (allocator arenas, lazy imports), which is not the spool.
        warm_until = time.monotonic() + 30
        while time.monotonic() < warm_until:
            sample()
        warm = {pid: len(samples[pid]) for pid in pids}
        with unwritable(stack.predictions):
            outage_start = time.monotonic()
            while time.monotonic() - outage_start < 60:
                sample()
            outage_end = time.monotonic()
    during = load.between(outage_start, outage_end)
    growth = {pid: max(samples[pid][warm[pid] :]) - samples[pid][warm[pid] - 1] for pid in pids}
    figures = {
        "requests_during_outage": len(during),
        "failed_during_outage": sum(a.status != 200 for a in during),
        "pending_rows_peak_per_replica": pending_peak,
        "spooled_mb_peak_per_replica": round(spooled_peak / 2**20, 1),
        "rss_mb_every_5_s": {str(pid): samples[pid] for pid in pids},
        "rss_growth_mb_max": round(max(growth.values()), 1),
        **check_every_served_row_logged(stack, load.served()),
        "dead_lettered": delta.Table(stack.predictions).dead_letter().count(),
    }
    record("storage_outage", figures)
    assert figures["failed_during_outage"] == 0 and figures["pending_rows_peak_per_replica"] > 0
    assert figures["rows_lost"] == 0 and figures["rows_duplicated"] == 0 and figures["dead_lettered"] == 0
    assert len(pids) == 2 and min(min(s) for s in samples.values()) > 0  # two live replicas were measured
    # The rows wait on disk, not in memory. The ~27,000 rows a replica held at the peak here take 11 MB as
    # JSON and 21 MB as the log's dicts (tracemalloc), so this bound catches rows kept past a 70 s outage;
    # against the warm baseline memory fell by 5 MB in a run here.
    assert figures["rss_growth_mb_max"] < 24


def serve_client(stack: Stack):
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    return ServeSubmissionClient(stack.config.ray.dashboard, headers=ray_auth_headers())


def deployed_serve_config(stack: Stack) -> dict:
    """What Serve runs now, as a config to send back: sending it with an application added or removed
    leaves the others untouched (Serve redeploys only applications whose config changed)."""
    details = serve_client(stack).get_serve_details()
    return {
        "http_options": {k: details["http_options"][k] for k in ("host", "port")},
        "applications": [
            app["deployed_app_config"] for app in details["applications"].values() if app.get("deployed_app_config")
        ],
    }


def application_names(stack: Stack) -> set[str]:
    return set(serve_client(stack).get_serve_details()["applications"])


def small_disk_app(stack: Stack, spool: Path, table: str) -> dict:
    """The stack's application as another one on /diskfull, one replica, spooling to `spool` and
    logging to its own predictions table."""
    serve_config = deployed_serve_config(stack)
    app = copy.deepcopy(next(a for a in serve_config["applications"] if a["name"] == "lakeloop"))
    raw = yaml.safe_load(app["args"]["config_yaml"])
    raw["serving"]["prediction_log"].update(spool_dir=str(spool), predictions_table=table)
    app["args"]["config_yaml"] = yaml.safe_dump(raw)
    app.update(name="lakeloop-diskfull", route_prefix="/diskfull")
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    return app


def test_a_full_disk_under_the_spool_answers_503_and_loses_no_answered_row(stack: Stack, monitor) -> None:
    """A replica spooling to a 16 MiB tmpfs while its table is unwritable, under 4 clients: once the
    disk is full it answers 503 with Retry-After (never 500, never a torn row), and once storage is
    back every row answered 200 lands exactly once, and no row of a 503."""
    table = "predictions_diskfull"
    table_uri = stack.config.storage.resolve(table)
    with tmpfs(stack.home / "diskfull-spool", "16m") as spool:
        serve_config = deployed_serve_config(stack)
        serve_client(stack).deploy_applications(
            {**serve_config, "applications": [*serve_config["applications"], small_disk_app(stack, spool, table)]}
        )
        url = f"{stack.url}/diskfull"
        try:
            assert ray_serve.wait_ready(url, 240), "the small-disk application did not come up"
            first = httpx.post(f"{url}/predict", json={"records": request_rows(2, 5)[0]}, timeout=30)
            assert first.status_code == 200, first.text
            assert wait_for(lambda: delta.Table(table_uri).exists(), 60, every=0.5)  # the table, to take away
            with unwritable(table_uri), Load(url, clients=4, seed=3, per_request=50) as load:
                full = wait_for(lambda: any(a.status == 503 for a in load.answers), 300, every=0.5)
                refused_at = time.monotonic()
                assert wait_for(lambda: time.monotonic() - refused_at > 5, 10)  # keep pressing on a full disk
            assert full, f"never refused: {Counter(a.status for a in load.answers)}"
            statuses = Counter(a.status for a in load.answers)
            refusals = [a for a in load.answers if a.status == 503]
            served = {**load.served(), first.json()["request_id"]: 2}
            landed = check_every_served_row_logged(stack, served, table_uri=table_uri)
            logged_rows = delta.Table(table_uri).count()
            after = httpx.post(f"{url}/predict", json={"records": request_rows(2, 6)[0]}, timeout=30)
        finally:
            serve_client(stack).deploy_applications(serve_config)  # the stack as it was
            gone = wait_for(lambda: "lakeloop-diskfull" not in application_names(stack), 120)
            assert gone, "the small-disk application was not removed"
    figures = {
        "requests": len(load.answers),
        "answered": {str(k): v for k, v in sorted(statuses.items())},
        **landed,
        "rows_logged_in_table": logged_rows,
        "answered_200_after_storage_came_back": after.status_code == 200,
    }
    record("disk_full", figures)
    assert set(statuses) == {200, 503}, statuses  # a full disk is a 503, never a 500 or a dropped connection
    assert all(a.retry_after for a in refusals)
    assert landed["rows_lost"] == 0 and landed["rows_duplicated"] == 0
    assert logged_rows == landed["rows_served"]  # nothing of a refused request was logged
    assert after.status_code == 200, after.text


def restart_mlflow(stack: Stack) -> float:
    """Start the stack's MLflow server again on its port; the seconds until it answered /health."""
    state = stack.state
    mlflow_service = next(s for s in state.services if s.name == "mlflow")
    began = time.monotonic()
    # the retrying training job, the monitor and both replicas' registry polls meet it as it starts
    port = int(state.mlflow_url.rsplit(":", 1)[1])
    process, restarted = start_mlflow_server(stack.root / "mlflow", port, timeout=300)
    stack.started.append(process.pid)
    state.services = [restarted if s is mlflow_service else s for s in state.services]
    state.write(stack.root / STATE_FILE)  # `stack down` stops the new server
    return time.monotonic() - began


def test_killing_the_mlflow_server_for_60_s_at_the_end_of_training(stack: Stack, monitor) -> None:
    """Killed once the training run has finished fitting: evaluation, logging the model, registering
    it and the gate's promotion all meet the outage, while the endpoint keeps serving."""
    client = MlflowClient(stack.config.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(stack.config.mlflow.experiment)
    started = int(time.time() * 1000)
    train_log = (stack.home / "train-during-outage.log").open("w")
    with Load(stack.url, clients=2, seed=2) as load:
        training = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", "train", "--json"],
            cwd=ROOT,
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=train_log,
            text=True,
        )

        def fitted() -> bool:
            runs = client.search_runs([experiment.experiment_id], f"attributes.start_time >= {started}")
            return any("resumed_from_epoch" in run.data.params for run in runs)

        assert wait_for(fitted, 600, every=0.2), "the training run never finished fitting"
        mlflow_pid = next(s.pid for s in stack.state.services if s.name == "mlflow")
        os.killpg(mlflow_pid, signal.SIGKILL)
        outage_start = time.monotonic()
        running_at_kill = training.poll() is None  # the outage meets the run, not a finished process
        time.sleep(60)  # the outage
        outage_end = time.monotonic()
        restart_s = restart_mlflow(stack)
        out, _ = training.communicate(timeout=600)
    train_log.close()
    during = load.between(outage_start, outage_end)
    outcome = json.loads(out) if training.returncode == 0 else {}
    registry = Registry.from_config(stack.config)
    version = str(outcome.get("model_version"))
    figures = {
        "requests_during_outage": len(during),
        "failed_during_outage": sum(a.status != 200 for a in during),
        "restart_s": round(restart_s, 1),
        "training_running_at_kill": running_at_kill,
        "training_exit_code": training.returncode,
        "registered_version": version,
        "gate": outcome.get("reason"),
    }
    assert running_at_kill, "training had already exited when MLflow was killed"
    assert training.returncode == 0, (stack.home / "train-during-outage.log").read_text()[-3000:]
    ref = ModelRef(registry.name, version, "", None)
    scored = registry.load(ref).predict_frame(pd.DataFrame(request_rows(4, 9)[0]))
    assert len(scored) == ROWS_PER_REQUEST  # the model is in the registry, artifacts and all
    # the registry is still promotable: move the champion (to the new version, or back to the first)
    compared = registry.state()
    target = "1" if compared.version == version else version
    decision = registry.promote(target, compared, GateDecision(True, "fault test: promote after the outage"))
    serving_followed = wait_for(lambda: httpx.get(f"{stack.url}/model", timeout=10).json()["version"] == target, 60)
    figures.update(promoted_after=decision.promote, serving_followed=serving_followed)
    record("mlflow_outage", figures)
    assert figures["failed_during_outage"] == 0 and figures["requests_during_outage"] > 0
    assert decision.promote and serving_followed


class FaultyProxy:
    """A TCP proxy in front of the Jobs API with three modes: `up` (forwards), `down` (nothing
    listens: connection refused) and `silent` (accepts and never answers)."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.mode, self._server, self._held = "down", None, []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set(self, mode: str) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in self._held:
            conn.close()
        self._held.clear()
        self.mode = mode
        if mode != "down":
            self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=True)
            threading.Thread(target=self._accept, args=(self._server, mode), daemon=True).start()

    def _accept(self, server: socket.socket, mode: str) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if mode == "silent":
                self._held.append(conn)
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def jobs_client(stack: Stack):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(stack.config.ray.dashboard, headers=ray_auth_headers())


def retraining_jobs(stack: Stack) -> list:
    jobs = jobs_client(stack).list_jobs()
    return [job for job in jobs if (job.submission_id or "").startswith("lakeloop-retrain-")]


def patient_config(stack: Stack) -> str:
    """The stack's configuration with the shipped Jobs API timeout and retries (the suite's 5 s and
    one try make the outage cases end quickly; two monitors and the looping one on 2 cores can make
    one submit slower than 5 s)."""
    raw = yaml.safe_load(Path(stack.env["LAKELOOP_CONFIG"]).read_text())
    raw["ray"]["request_timeout_s"] = RayConfig.model_fields["request_timeout_s"].default
    raw["monitor"]["retries"] = MonitorConfig.model_fields["retries"].default
    path = stack.home / "patient.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def monitor_once(stack: Stack, jobs_api: str, config: str | None = None) -> subprocess.Popen:
    env = {**stack.env, "RAY_API_SERVER_ADDRESS": jobs_api, "LAKELOOP_CONFIG": config or stack.env["LAKELOOP_CONFIG"]}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "monitor", "--once", "--json"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stack.started.append(process.pid)  # stopped at teardown if a test fails before it ends
    return process


def test_drift_while_the_jobs_api_is_down_or_silent_gives_exactly_one_retraining(stack: Stack, monitor) -> None:
    proxy = FaultyProxy(stack.config.ray.dashboard)
    drifted = request_rows(1200, 21, shift=60.0)  # far outside the training range: every window drifts
    with httpx.Client(base_url=stack.url, timeout=60) as client:
        served = {}
        for body in drifted:
            response = client.post("/predict", json={"records": body})
            assert response.status_code == 200
            served[response.json()["request_id"]] = len(body)
    assert check_every_served_row_logged(stack, served)["rows_lost"] == 0
    # the looping monitor works off the faults' backlog first (about 0.5 s per window here), so that
    # the monitors below check only the drifted windows and meet the Jobs API, not the backlog
    assert monitor_caught_up(stack, 600), "the looping monitor did not catch up"

    proxy.set("down")
    down = monitor_once(stack, proxy.url)
    _, down_err = down.communicate(timeout=300)
    proxy.set("silent")
    began = time.monotonic()
    silent = monitor_once(stack, proxy.url)
    _, silent_err = silent.communicate(timeout=300)
    silent_seconds = time.monotonic() - began
    jobs_after_outage = retraining_jobs(stack)

    proxy.set("up")
    pair = [monitor_once(stack, proxy.url, patient_config(stack)) for _ in range(2)]
    finished = [p.communicate(timeout=300) for p in pair]
    outcomes = [json.loads(out or "{}") for out, _ in finished]
    jobs = retraining_jobs(stack)
    proxy.set("down")
    for job in jobs:  # the retraining itself is not under test here: stop it
        jobs_client(stack).stop_job(job.submission_id)
    figures = {
        "monitor_exit_jobs_api_down": down.returncode,
        "monitor_exit_jobs_api_silent": silent.returncode,
        "monitor_seconds_jobs_api_silent": round(silent_seconds, 1),
        "jobs_submitted_during_outage": len(jobs_after_outage),
        "two_monitors_after": [o.get("submitted") for o in outcomes],
        "retraining_jobs": len(jobs),
    }
    record("jobs_api_outage", figures)
    assert down.returncode != 0 and "Jobs API" in down_err and "Traceback" not in down_err
    assert silent.returncode != 0 and "Jobs API" in silent_err and silent_seconds < 120
    assert jobs_after_outage == []
    assert all(p.returncode == 0 for p in pair), [(out[-1000:], err[-2000:]) for out, err in finished]
    assert sorted(o["submitted"] for o in outcomes) == [False, True]
    assert len(jobs) == 1


def monitor_progress(stack: Stack) -> dict:
    """Rows landed in the predictions table, rows in the monitor's traffic windows, and rows before
    its position (commit version and offset of the newest checked window)."""
    landed = delta.Table(stack.predictions).changes(None, [REQUEST_ID])[0].to_pandas()
    per_commit = landed.groupby(delta.COMMIT_VERSION).size()
    table = delta.Table(stack.config.storage.resolve(stack.config.monitor.drift_reports_table)).read()
    traffic = table.to_pandas() if table is not None else pd.DataFrame()
    if traffic.empty:
        return {"rows_landed": len(landed), "rows_in_windows": 0, "rows_before_position": 0}
    traffic = traffic[traffic["detector"] != PERFORMANCE]
    windows = traffic.drop_duplicates(["window_start", "window_end", "source_to", "source_offset"])
    newest = windows.sort_values(["source_to", "source_offset"]).iloc[-1]
    before = int(per_commit[per_commit.index < newest["source_to"]].sum()) + int(newest["source_offset"])
    return {"rows_landed": len(landed), "rows_in_windows": int(windows["rows"].sum()), "rows_before_position": before}


def monitor_caught_up(stack: Stack, timeout: float) -> bool:
    """The looping monitor has checked every full window of the rows landed so far."""

    def caught_up() -> bool:
        progress = monitor_progress(stack)
        return progress["rows_landed"] - progress["rows_in_windows"] < stack.config.monitor.window_rows

    return wait_for(caught_up, timeout, every=2.0)


def test_the_monitor_survived_every_fault_and_checked_every_landed_row_once(stack: Stack, monitor) -> None:
    """The looping monitor of this module is alive after every fault above, and its reports (with
    those of the monitors test_drift_while... started) cover the landed rows exactly once."""
    assert monitor_caught_up(stack, 300), "the monitor did not catch up"
    output = (stack.home / "monitor.log").read_text()
    errors = [line for line in output.splitlines() if line.startswith("error")]
    figures = {
        "monitor_alive": monitor.poll() is None,
        "passes_with_an_error": len(errors),
        "errors": errors[:5],
        **monitor_progress(stack),
    }
    record("monitor", figures)
    assert figures["monitor_alive"], output[-3000:]
    # a pass meets an outage only while one lasts (two of 60 s above, one pass every interval_s), and
    # says which service failed it: an unexpected exception is a bug, not an outage
    assert not [line for line in errors if ", unexpected," in line], errors
    assert len(errors) <= 2 * 60 / stack.config.monitor.interval_s + 4, errors
    # every row up to the position in exactly one window
    assert figures["rows_in_windows"] == figures["rows_before_position"]
