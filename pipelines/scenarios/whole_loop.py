"""The whole loop on one machine, on embedded defaults: what `lakeloop demo` runs.

Starts the embedded stack (an `mlflow server` and a Ray head with the Jobs API, both on loopback),
generates demo data, trains the default model family, promotes, deploys Serve, sends traffic, then
shifts the world:
- covariate (default): drifted rows land in the events table and drifted traffic reaches the
  endpoint; the monitor detects the drift and submits retraining through the Jobs API;
- concept: the labelling rule changes; labelled traffic goes through /predict and /feedback in
  rounds, the monitor sees performance fall and retrains on the rows since the change.
The retrained model goes through the gate, and Serve swaps to it while clients keep sending
requests. It ends with a summary and stops everything it started unless asked to keep it running.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from pipelines.adapters import delta, local_services, ray_cluster, ray_serve
from pipelines.adapters.registry import Registry
from pipelines.core.config import LakeloopConfig
from pipelines.core.errors import LakeloopError
from pipelines.monitoring.check import describe as describe_check
from pipelines.monitoring.check import run_once
from pipelines.monitoring.retraining import follow
from pipelines.scenarios import endpoint, synthetic
from pipelines.scenarios.closed_loop import ClosedLoop
from pipelines.scenarios.demo_data import land_demo_rows
from pipelines.scenarios.traffic import (
    ROWS_PER_REQUEST,
    LabelledStream,
    Traffic,
    records,
    wait_for_version,
    wait_logged,
)
from pipelines.training.validation import validate_table
from pipelines.training.workflow import train_and_register

WINDOWS_PER_PHASE = 3
CONCEPT_ROUNDS = 12  # at most 2,400 new-rule labels


@dataclass(frozen=True)
class DemoOptions:
    rows: int = 20_000  # rows of demo data per landing
    seed: int = 7
    drift: str = "covariate"  # covariate | concept
    keep_running: bool = False


class Timeline:
    """One line per stage on the console as it starts, and one with its outcome."""

    def __init__(self, console: TextIO) -> None:
        self.stages: list[tuple[str, float, str]] = []
        self.console = console

    def run(self, name: str, fn, describe=lambda result: ""):
        print(f"[{name}] ...", file=self.console, flush=True)
        started = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - started
        self.stages.append((name, seconds, describe(result)))
        print(f"[{name}] {seconds:6.1f}s  {describe(result)}", file=self.console, flush=True)
        return result


@contextmanager
def console_to_log(log: Path) -> Iterator[TextIO]:
    """Everything this process and its children write to stdout and stderr (Ray Data's progress bars,
    the workers' and HAProxy's logs Ray forwards: 22,852 lines in a demo before) goes
    to `log`; yields the console as it was, for the story. Where stdout is no file (e.g. captured in
    a test), nothing is redirected.

    When the story ends, stdout is given back for the summary, but stderr stays on the log until the
    process exits: what prints after the story (finalisers, the redraws of the workers' progress bars
    that Ray's patched print() makes on every later print, the atexit handlers) is chatter too. (A CI
    run of the e2e demo test once counted 125 console lines for a story of 25. While the story runs,
    only the story reaches the console, so the 100 came after it.) If the story ends with an error,
    stderr is given back as well, for the step runner's message."""
    try:
        console_fd = sys.stdout.fileno()  # with --json, stderr: the step runner redirected stdout there
    except (AttributeError, OSError, ValueError):
        yield sys.stdout
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    console = os.fdopen(os.dup(console_fd if console_fd not in (1, 2) else saved[console_fd - 1]), "w", buffering=1)
    give_back = (1, 2)
    with log.open("ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield console
            give_back = (1,)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd in give_back:
                os.dup2(saved[fd - 1], fd)
            for fd in saved:
                os.close(fd)
            console.close()


def _start_stack(config: LakeloopConfig, keep_running: bool, cleanup: ExitStack) -> tuple[LakeloopConfig, dict]:
    """MLflow server and Ray head as background processes; config pointed at them."""
    root = Path(config.storage.root)
    mlflow_port = 5000 if not local_services.port_open(5000) else local_services.free_port()
    dashboard_port = 8265 if not local_services.port_open(8265) else local_services.free_port()
    mlflow_process, mlflow_service = local_services.start_mlflow_server(root / "mlflow", mlflow_port)
    try:
        head_process, head_service, info = local_services.start_ray_head(
            root / "ray", dashboard_port, config.ray.num_cpus
        )
    except LakeloopError:
        local_services.stop_pid(mlflow_process.pid)
        raise
    if keep_running:  # `lakeloop stack down` stops it, and other commands join it
        local_services.StackState(
            [mlflow_service, head_service], info["gcs_address"], head_service.url, mlflow_service.url
        ).write(Path(config.storage.resolve(local_services.STATE_FILE)))
    else:  # in reverse: the head (and whatever its session left behind), then MLflow
        for process in (mlflow_process, head_process):
            cleanup.callback(local_services.stop_session, process.pid)
            cleanup.callback(local_services.stop_pid, process.pid)
    config = config.model_copy(
        update={
            "mlflow": config.mlflow.model_copy(update={"tracking_uri": mlflow_service.url}),
            "ray": config.ray.model_copy(update={"address": info["gcs_address"], "dashboard": head_service.url}),
        }
    )
    return config, {"mlflow": mlflow_service.url, "ray_dashboard": head_service.url}


def _deploy(config: LakeloopConfig) -> str:
    """conf/serve.yaml through the same path as `lakeloop serve` (on a free port if 8000 is taken)."""
    port = int(endpoint.shipped_config(config).get("http_options", {}).get("port", 8000))
    port = port if not local_services.port_holder(port) else local_services.free_port()
    url = endpoint.deploy(config, config.ray.dashboard, port)
    if not ray_serve.wait_ready(url, 120):
        raise LakeloopError("the endpoint did not load the champion within 120 s")
    return url


def _logged_rows(config: LakeloopConfig, expected: int = 0) -> int:
    """Rows in the predictions log once it holds `expected` (or after 30 s: replicas flush every few seconds)."""
    wait_logged(config, expected, timeout_s=30)
    return delta.tables(config).predictions.count()


def _p_values(outcome: dict) -> str:
    """The three most shifted features of the newest window: p-value and effect size."""
    features = [r for r in outcome.reports if r["detector"] == "features"]
    if not features:
        return "-"
    details = json.loads(features[-1]["details"])
    top = sorted(details["p_values"].items(), key=lambda kv: kv[1])[:3]
    effects = details.get("effect_sizes", {})
    return ", ".join(f"{name} p={value:.1e} ({_effect(effects.get(name, {}))})" for name, value in top)


def _effect(sizes: dict[str, float]) -> str:
    named = {"wasserstein_sd": "{:.2f} sd", "psi": "PSI {:.2f}", "jensen_shannon": "JS {:.2f}"}
    return ", ".join(named[k].format(v) for k, v in sizes.items() if k in named) or "-"


def demo_log(config: LakeloopConfig) -> Path:
    root = config.storage.root
    return Path("lakeloop-demo.log") if "://" in root else Path(root) / "demo.log"


def run_demo(args: DemoOptions, config: LakeloopConfig) -> DemoResult:
    log = demo_log(config)
    with console_to_log(log) as console:
        print(f"Ray, training and Serve output goes to {log}", file=console, flush=True)
        try:
            return _run_demo(args, config, Timeline(console), log)
        finally:
            # Into the log, not after the summary: what finalisers print (Ray Data's executors announce
            # "execution finished" when they are collected), the workers' last lines, which Ray
            # flushes as it disconnects, and the progress bars it would redraw on the next print.
            gc.collect()
            ray_cluster.disconnect()


def _run_demo(args: DemoOptions, config: LakeloopConfig, timeline: Timeline, log: Path) -> DemoResult:
    features = config.dataset.feature_names
    requests = WINDOWS_PER_PHASE * config.monitor.window_rows // ROWS_PER_REQUEST
    with ExitStack() as cleanup:
        config, urls = timeline.run(
            "stack",
            lambda: _start_stack(config, args.keep_running, cleanup),
            lambda r: f"MLflow {r[1]['mlflow']}, Ray {r[1]['ray_dashboard']}",
        )
        timeline.run(
            "generate",
            lambda: land_demo_rows(config, args.rows, args.seed),
            lambda r: f"{r.rows} rows into {r.uri} version {r.version}",
        )
        timeline.run("validate", lambda: validate_table(config), lambda r: f"version {r.version}, {r.rows} rows ok")
        cleanup.enter_context(ray_cluster.ray_session(config))
        first = timeline.run(
            "train",
            lambda: train_and_register(config),
            lambda o: (
                f"version {o.model_version} ({o.family}), test {config.gate.metric} "
                f"{o.metrics[config.gate.metric]:.3f}, "
                f"{'promoted' if o.promoted else 'not promoted'}"
            ),
        )
        url = timeline.run("serve", lambda: _deploy(config), lambda u: f"{u}/docs")
        if not args.keep_running:
            cleanup.callback(ray_serve.shutdown, config.ray.dashboard)
        normal = Traffic(url, records(synthetic.generate(4000, 101).to_pandas(), features))
        timeline.run("traffic", lambda: normal.send(requests), lambda s: dict(s))
        _logged_rows(config, normal.served_rows)
        calm = timeline.run("monitor (calm)", lambda: run_once(config), describe_check)
        phase = _concept_phase if args.drift == "concept" else _covariate_phase
        shifted = phase(args, config, url, timeline)
        ray_serve.shutdown(config.ray.dashboard)  # drain: replicas flush their prediction buffers
        served = normal.served_rows + shifted.served_rows
        logged = _logged_rows(config, served)
        if args.keep_running:
            _deploy(config)
    failed = normal.failed + shifted.failed
    serving_version = shifted.new_version if shifted.swapped else first.model_version
    lines = ["", f"{'stage':<20} {'seconds':>8}", *(f"{n:<20} {s:8.1f}" for n, s, _ in timeline.stages), ""]
    lines += [
        f"before drift       version {first.model_version}: " + _metrics(first.metrics),
        f"drift              calm windows: {_flags(calm)}; {shifted.detection}",
        *shifted.lines,
        f"serving            version {serving_version}",
        f"requests           {sum(normal.statuses.values()) + shifted.requests} sent, {failed} failed",
        f"predictions        {served} rows served, {logged} logged to Delta",
        f"MLflow UI          {urls['mlflow']}",
        f"Ray dashboard      {urls['ray_dashboard']}",
        f"full output        {log}",
        "still running: `lakeloop stack down` stops it" if args.keep_running else "everything started was stopped",
    ]
    data = {
        "drift": args.drift,
        "stages": [{"stage": n, "seconds": s, "detail": d} for n, s, d in timeline.stages],
        "first_version": first.model_version,
        "first_metrics": first.metrics,
        "first_promoted": first.promoted,
        "calm_drift": [w.drift for w in calm.windows],
        **shifted.data,
        "swapped": shifted.swapped,
        "serving_version": serving_version,
        "failed_requests": failed,
        "served_rows": served,
        "logged_rows": logged,
        "log": str(log),
        **urls,
    }
    ok = failed == 0 and served == logged and shifted.ok
    return DemoResult("\n".join(lines), data, ok)


@dataclass
class DemoResult:
    summary: str
    data: dict
    ok: bool  # no failed request, every served row logged, and the loop did what the scenario expects


@dataclass
class PhaseResult:
    detection: str  # one line: what the monitor saw
    lines: list[str]  # summary lines of the phase
    data: dict  # for --json
    served_rows: int
    requests: int
    failed: int
    swapped: bool
    new_version: str | None
    ok: bool


def _covariate_phase(args: DemoOptions, config: LakeloopConfig, url: str, timeline: Timeline) -> PhaseResult:
    """Covariate drift: drifted rows land in the events table and drifted traffic reaches the endpoint;
    the monitor submits retraining, and Serve swaps while clients keep sending."""
    requests = WINDOWS_PER_PHASE * config.monitor.window_rows // ROWS_PER_REQUEST
    timeline.run(
        "drifted data lands",
        lambda: land_demo_rows(config, args.rows, args.seed + 1, "covariate"),
        lambda r: f"{r.rows} covariate-drifted rows into {r.uri} version {r.version}",
    )
    drifted = Traffic(
        url, records(synthetic.generate(4000, 102, "covariate").to_pandas(), config.dataset.feature_names)
    )
    logged_before = _logged_rows(config)  # the log already holds the calm phase's rows
    timeline.run("drifted traffic", lambda: drifted.send(requests), lambda s: dict(s))
    _logged_rows(config, logged_before + drifted.served_rows)
    alarm = timeline.run("monitor (drift)", lambda: run_once(config), describe_check)
    during_swap = drifted.start()
    retrained = None
    if alarm.submission_id:
        retrained = timeline.run(
            "retraining job",
            lambda: follow(config, alarm.submission_id),
            lambda o: f"version {o.version}: {o.outcome}: {o.reason}",
        )
    promoted = bool(retrained and retrained.outcome == "promoted")
    swapped = promoted and timeline.run(
        "swap",
        lambda: wait_for_version(url, retrained.version, 3 * config.serving.poll_interval_s + 30),
        lambda ok: "serving the new champion" if ok else "the endpoint did not swap in time",
    )
    drifted.stop(during_swap)
    retraining = f"{alarm.submission_id or 'not submitted'}" + (
        f" ({retrained.outcome}: {retrained.reason})" if retrained else ""
    )
    return PhaseResult(
        detection=f"shifted windows: {_flags(alarm)}; {_p_values(alarm)}",
        lines=[f"retraining         {retraining}"],
        data={
            "shifted_drift": [w.drift for w in alarm.windows],
            "submission_id": alarm.submission_id,
            "monitor_seconds": alarm.seconds,
            "retrained": asdict(retrained) if retrained else None,
        },
        served_rows=drifted.served_rows,
        requests=sum(drifted.statuses.values()),
        failed=drifted.failed,
        swapped=bool(swapped),
        new_version=retrained.version if retrained else None,
        ok=bool(alarm.submitted and retrained is not None),
    )


def _concept_phase(args: DemoOptions, config: LakeloopConfig, url: str, timeline: Timeline) -> PhaseResult:
    """Concept drift: the labelling rule changes. Rounds of labelled traffic go through /predict and
    /feedback, the monitor sees performance fall, retrains on the new regime, and Serve swaps;
    clients keep sending throughout. Accuracy on held-out new-rule rows, before and after."""
    dataset = config.dataset
    background = Traffic(url, records(synthetic.generate(4000, 103, "concept").to_pandas(), dataset.feature_names))
    loop = ClosedLoop(config, url, LabelledStream(url, dataset.feature_names, dataset.label), during_jobs=background)
    rounds = []
    for seed in range(CONCEPT_ROUNDS):  # rounds of 200 new-rule labels until a retrained model serves
        rounds.append(
            timeline.run(
                f"concept round {seed + 1}",
                lambda seed=seed: loop.round(synthetic.generate(200, args.seed + 100 + seed, "concept").to_pandas()),
                _describe_round,
            )
        )
        if rounds[-1].swapped:
            break
    jobs = [r.job for r in rounds if r.job]
    promoted = next((j for j in jobs if j.outcome == "promoted"), None)
    swapped = bool(rounds and rounds[-1].swapped)
    heldout = synthetic.generate(4000, args.seed + 999, "concept").to_pandas()
    before = _accuracy(config, "1", heldout)
    after = _accuracy(config, promoted.version, heldout) if promoted else None
    first_drift = next((i for i, r in enumerate(rounds) if r.check.triggered), None)
    detection = (
        f"performance drift after {(first_drift + 1) * 200} new-rule labels"
        if first_drift is not None
        else "no drift detected"
    )
    lines = [
        "retraining         " + ("; ".join(f"{j.submission_id} {j.outcome} ({j.reason})" for j in jobs) or "none"),
        f"new-rule accuracy  version 1: {before:.3f}"
        + (f"; version {promoted.version}: {after:.3f}" if promoted else ""),
    ]
    return PhaseResult(
        detection=detection,
        lines=lines,
        data={
            "rounds": len(rounds),
            "jobs": [asdict(j) for j in jobs],
            "new_rule_accuracy": {"before": before, "after": after},
        },
        served_rows=background.served_rows + sum(len(r.served) for r in rounds),
        requests=sum(background.statuses.values()) + len(rounds),
        failed=background.failed + loop.stream.failed,
        swapped=swapped,
        new_version=promoted.version if promoted else None,
        ok=bool(swapped and after is not None and after > before),
    )


def _describe_round(result) -> str:
    check = result.check
    line = describe_check(check).split("\n")[0]
    if result.job:
        line += f"; job {result.job.outcome} in {result.job.seconds:.0f} s"
    return line + ("; serving the new champion" if result.swapped else "")


def _accuracy(config: LakeloopConfig, version: str, frame) -> float:
    model = Registry.from_config(config).load_version(version)
    predicted = model.predict_frame(frame[config.dataset.feature_names])["prediction"].astype(str).to_numpy()
    return float((predicted == frame[config.dataset.label].astype(str).to_numpy()).mean())


def _metrics(scores: dict) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in scores.items() if k in ("roc_auc", "accuracy", "rmse", "r2"))


def _flags(outcome: dict) -> str:
    return " ".join("drift" if w.drift else "-" if w.drift is None else "ok" for w in outcome.windows) or "none"
