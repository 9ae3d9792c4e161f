"""What every benchmark shares: where results go, the machine and versions, a process-tree memory
sampler, and a registered lakeloop model to measure against (a real `mlflow server`)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from pipelines.scenarios import synthetic

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench-results"
RECORD = synthetic.EXAMPLE_ROW


def machine() -> dict:
    memory_kb = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")
    )
    packages = ("ray", "mlflow", "deltalake", "pyarrow", "torch", "pandas", "alibi-detect", "polars")
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **data}, indent=2, default=str))
    return path


def tree_sum(root: int, measure) -> float:
    """`measure(fields of /proc/<pid>/status, /proc/<pid>/stat after the command name)` summed over
    `root` and every live descendant."""
    parents, values = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status, stat = (entry / "status").read_text(), (entry / "stat").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        pid = int(entry.name)
        parents[pid] = int(fields.get("PPid", "0").strip())
        values[pid] = measure(fields, stat.rsplit(")", 1)[1].split())
    tree, grew = {root}, True
    while grew:
        children = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(values.get(p, 0) for p in tree)


def _tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants (shared pages are counted per process)."""
    return tree_sum(root, lambda f, _: int(f["VmRSS"].split()[0]) if "VmRSS" in f else 0) / 1024


def tree_cpu_jiffies(root: int) -> int:
    """CPU time (user + system, reaped children included) of `root` and every live descendant."""
    return int(tree_sum(root, lambda _, stat: sum(int(v) for v in stat[11:15])))  # utime stime cutime cstime


@contextmanager
def peak_memory(interval_s: float = 0.2) -> Iterator[dict]:
    """Samples this process tree's RSS while the block runs: {'peak_mb': ...} afterwards."""
    result = {"peak_mb": 0.0}
    stop = threading.Event()
    baseline = _tree_rss_mb(os.getpid())

    def sample() -> None:
        while not stop.is_set():
            result["peak_mb"] = max(result["peak_mb"], _tree_rss_mb(os.getpid()))
            stop.wait(interval_s)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["baseline_mb"] = baseline


def user_frames(workdir: Path, rows, columns: list[str]) -> tuple:
    """A 1-row frame and the whole frame of `columns`, read as users read them: `rows` written to a
    Delta table and read back with DeltaTable(...).to_pandas() (nullable columns, categoricals as
    object; a frame built from Python scalars is faster to score and flattered the figure before)."""
    from deltalake import DeltaTable, write_deltalake

    path = str(workdir / "pyfunc_rows")
    write_deltalake(path, rows)
    frame = DeltaTable(path).to_pandas()[columns]
    return frame.head(1), frame


def call_ms(model, frame, calls: int, warmup: int = 20) -> dict:
    """Mean, p50 and p99 (ms) of `calls` predicts after `warmup` ones."""
    import numpy as np

    for _ in range(warmup):
        model.predict(frame)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        model.predict(frame)
        times.append(1000 * (time.perf_counter() - started))
    return {
        "mean": round(float(np.mean(times)), 3),
        "p50": round(float(np.median(times)), 3),
        "p99": round(float(np.percentile(times, 99)), 3),
    }


@dataclass
class BenchModel:
    tracking_uri: str
    name: str
    version: str
    local_dir: Path  # the same pyfunc, downloaded, for servers that load from disk


def demo_config(storage_root: Path, tracking_uri: str = "http://127.0.0.1:5000"):
    from pipelines.core.config import load_config

    os.environ["LAKELOOP_STORAGE_ROOT"] = str(storage_root)
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    return load_config(ROOT / "conf" / "lakeloop.yaml")


def untrained_mlp(config, pipeline):
    """A lakeloop model of the configured MLP's shape with initial weights (scoring costs what a
    trained one's does)."""
    from pipelines.core.estimators import TorchEstimator
    from pipelines.core.module_spec import MLP_CLASS, ModuleSpec
    from pipelines.training.fitted_model import LakeloopModel

    params = config.train.families["mlp"].settings()
    spec = ModuleSpec(MLP_CLASS, pipeline.onehot_width, 2, {k: params[k] for k in ("hidden", "depth", "dropout")})
    return LakeloopModel(pipeline, TorchEstimator("mlp", spec, spec.build().state_dict(), "classification"))


def fitted_xgboost(config, pipeline, frame, validation_share: float = 0.2):
    """A lakeloop model of the xgboost family fitted in-process with its shipped settings, early
    stopping on the last `validation_share` of `frame` (as many trees as a trained model of the
    family has)."""
    import xgboost

    from pipelines.core.estimators import XGBoostEstimator
    from pipelines.training.fitted_model import LakeloopModel
    from pipelines.training.xgboost_loop import booster_params

    dataset = config.dataset
    classes = len(dataset.classes or [])
    settings = config.train.families["xgboost"].settings()
    cfg = {"settings": settings, "task": dataset.task, "classes": classes, "gate_metric": config.gate.metric}
    cfg.update(use_gpu=False, seed=0, threads=2)
    numeric, slots = pipeline.layout
    types = ["q"] * numeric + ["c"] * len(slots)
    matrix, target = pipeline.transform_frame(frame), pipeline.encode_target(frame[dataset.label])
    cut = int(len(frame) * (1 - validation_share))
    train, valid = (
        xgboost.DMatrix(matrix[rows], target[rows], feature_types=types, enable_categorical=True)
        for rows in (slice(0, cut), slice(cut, None))
    )
    booster = xgboost.train(
        booster_params(cfg),
        train,
        settings["max_rounds"],
        evals=[(valid, "validation")],
        early_stopping_rounds=settings["early_stopping_rounds"],
        verbose_eval=False,
    )
    booster = booster[: booster.best_iteration + 1]
    return LakeloopModel(pipeline, XGBoostEstimator("xgboost", booster.save_raw("ubj"), dataset.task, classes))


def fitted_pipeline(dataset, frame):
    """The feature transform fitted in-process on `frame` (no Ray: the same statistics, one block)."""
    import pyarrow as pa

    from pipelines.core.feature_transform import statistics
    from pipelines.training.features import FeaturePipeline

    table = pa.Table.from_pandas(frame[dataset.feature_names], preserve_index=False)
    stats = statistics({n: table.column(n) for n in table.column_names}, dataset.numeric, dataset.categorical)
    return FeaturePipeline(dataset).fit(stats)


@contextmanager
def registered_model(workdir: Path, family: str = "xgboost", dataset=None, frame=None) -> Iterator[BenchModel]:
    """A real tracking server with one registered lakeloop pyfunc: the fitted feature pipeline and the
    default family's model fitted in-process (`mlp`: the shipped network with initial weights; either
    way scoring costs what a model trained by `lakeloop train` costs). On the demo table unless
    `dataset` (a DatasetConfig) and its training `frame` are given."""
    import mlflow

    from pipelines.adapters.local_services import start_mlflow_server, stop_pid
    from pipelines.adapters.registry import Registry
    from pipelines.core.gate import GateDecision
    from pipelines.training.workflow import log_model

    process, service = start_mlflow_server(workdir / "mlflow")
    try:
        config = demo_config(workdir / "data", service.url)
        if dataset is not None:
            config = config.model_copy(update={"dataset": dataset})
        frame = synthetic.generate(5000, 1).to_pandas() if frame is None else frame
        pipeline = fitted_pipeline(config.dataset, frame)
        model = fitted_xgboost(config, pipeline, frame) if family == "xgboost" else untrained_mlp(config, pipeline)
        mlflow.set_tracking_uri(service.url)
        mlflow.set_experiment("bench")
        registry = Registry.from_config(config)
        with mlflow.start_run():
            version = log_model(model, frame, {}, config, registry, {})  # no test scores: not a gated training
        registry.promote(version, registry.state(), GateDecision(True, "the benchmark's model"))
        local = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{config.mlflow.registered_model}/{version}", dst_path=str(workdir / "model")
            )
        )
        yield BenchModel(service.url, config.mlflow.registered_model, version, local)
    finally:
        stop_pid(process.pid)


def child_json(module: str, args: list[str], what: str) -> dict:
    """Run `python -m module *args` in a fresh process (from the repository root); its last line of
    output, as JSON. A child that fails ends the benchmark with its stderr, naming `what`."""
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


@contextmanager
def local_ray() -> Iterator[float]:
    """A fresh 2-CPU local Ray cluster for the block; yields how long starting it took."""
    import ray

    seconds, _ = timed(lambda: ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR"))
    try:
        yield seconds
    finally:
        ray.shutdown()
