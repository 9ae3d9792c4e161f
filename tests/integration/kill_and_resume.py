"""Run by test_training in a fresh process and Ray cluster: train, SIGKILL the Train workers after
the first checkpoints, and print the run's outcome as JSON, with the modules the driver imported
while the fit ran (a fresh process: nothing was imported by an earlier test)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.util.state import list_actors

from pipelines.adapters import delta
from pipelines.adapters.local_services import free_port
from pipelines.core.config import parse_config
from pipelines.scenarios import synthetic
from pipelines.training import families
from pipelines.training.data import prepare
from tests.helpers import demo_raw_config


def train_worker_pids() -> set[int]:
    try:
        pids = {w.pid for w in list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])}
    except Exception:  # noqa: BLE001 - the process titles below find them too
        pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


# Each report must take a while, so the kill lands mid-run: for the MLP small batches streamed every
# epoch (no in-memory cache), six epochs; for xgboost a report every 2 rounds, 20 reports, no early stop.
SLOW = {
    "mlp": ({"max_epochs": 6, "patience": 6, "cache_rows": 0}, {"batch_size": 16}, 6),
    "xgboost": ({}, {"max_rounds": 40, "rounds_per_report": 2, "early_stopping_rounds": 1000, "eta": 0.05}, 20),
}


def main(root: str, family: str) -> None:
    raw = demo_raw_config(Path(root))
    train, params, reports = SLOW[family]
    raw["train"].update(family=family, local_mode_rows=0, **train)  # a worker group: there is a worker to kill
    raw["train"]["families"][family]["params"].update(params)
    config = parse_config(raw)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=free_port(),
        logging_level=logging.WARNING,
    )
    delta.tables(config).events.append(synthetic.generate(20000, 2))
    prepared = prepare(config)
    datasets = {name: prepared.splits[name].materialize() for name in ("train", "validation")}
    outcome: dict = {}
    families.family_module(config, family)
    folders = set(Path(tempfile.gettempdir()).glob("lakeloop-*"))
    before = set(sys.modules)
    thread = threading.Thread(
        target=lambda: outcome.update(
            trained=families.fit(config, family, datasets, prepared.pipeline, None, name="kill-test")
        )
    )
    thread.start()
    storage = Path(config.train_storage_path) / "kill-test"
    deadline = time.monotonic() + 240
    # A folder appears when its upload starts and rank 0 reports again only once the controller has
    # taken the previous report: three folders mean the second checkpoint is registered.
    while len(list(storage.glob("checkpoint_*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    killed = sorted(train_worker_pids())
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    thread.join(timeout=400)
    imported = sorted(set(sys.modules) - before)
    trained = outcome["trained"]
    print(
        json.dumps(
            {
                "killed": killed,
                "resumed_from_epoch": trained.resumed_from_epoch,
                "epochs": [h["epoch"] for h in trained.history],
                "reports": reports,
                "imported_during_fit": imported,
                "left_folders": sorted(map(str, set(Path(tempfile.gettempdir()).glob("lakeloop-*")) - folders)),
            }
        )
    )
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
