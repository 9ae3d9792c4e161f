"""Shared test helpers (importable as tests.helpers): one of each, as Ray keeps one wait_for_condition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "conf" / "lakeloop.yaml"


def demo_raw_config(data_root: Path) -> dict:
    """The shipped demo config, with storage under data_root."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["storage"]["root"] = str(data_root)
    return raw


def landed_feature_tables(raw: dict, tables):
    """`raw` with the worked example's features section (keeping its features.online), and `tables`
    (FeatureTables) written to its storage; the config."""
    from pipelines.adapters import delta
    from pipelines.core.config import parse_config
    from pipelines.scenarios.feature_tables import TABLES, features_section

    raw["dataset"]["table"] = "training_set"
    online = raw.get("features", {}).get("online", {})  # where the caller put the online store
    raw["features"] = {**features_section(), "online": online}
    config = parse_config(raw)
    for part, name in TABLES.items():
        delta.tables(config).named(name).append(getattr(tables, part))
    return config


def newest_event(tables) -> datetime:
    return pd.Timestamp(tables.labels.column("event_time").to_pandas().max()).to_pydatetime()


def customers_of(tables) -> list[str]:
    return sorted(set(tables.labels.column("customer_id").to_pylist()))


def offline_values(config, tables, at: datetime, customers: list[str]) -> pd.DataFrame:
    """The training-set rule (the point-in-time join) for an event of each customer at `at`: what an
    online lookup after a materialization at `at` must give."""
    from pipelines.core.point_in_time import as_of_join
    from pipelines.feature_tables.build import view_join

    events = pd.DataFrame({"customer_id": customers, "event_time": pd.Timestamp(at)})
    for view in config.features.views:
        source = getattr(tables, view.name).to_pandas()  # the example's views are named as its tables' parts
        events = as_of_join(events, source, "event_time", view_join(view))
    return events


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def served_log(config, frame, start: datetime, rows_per_request: int = 5) -> tuple[pa.Table, pa.Table]:
    """What the Serve app would have logged for these rows (its own row format): a predictions table
    (requests of `rows_per_request` rows, one second apart) and a feedback table labelling every row
    with the frame's label column, an hour after it was served."""
    from pipelines.adapters.prediction_log import FEEDBACK_SCHEMA, feedback_row, prediction_rows, predictions_schema

    dataset = config.dataset
    served, labels = [], []
    records = frame.to_dict(orient="records")
    for first in range(0, len(records), rows_per_request):
        request_id, at = f"q{first // rows_per_request}", start + timedelta(seconds=first // rows_per_request)
        chunk = records[first : first + rows_per_request]
        features = {f: [r[f] for r in chunk] for f in dataset.feature_names}
        served += prediction_rows(
            request_id, config.mlflow.registered_model, "1", at, features, [{"prediction": 0} for _ in chunk], dataset
        )
        labels += [
            feedback_row(request_id, row, r[dataset.label], at + timedelta(hours=1)) for row, r in enumerate(chunk)
        ]
    return (
        pa.Table.from_pylist(served, schema=predictions_schema(dataset)),
        pa.Table.from_pylist(labels, schema=FEEDBACK_SCHEMA),
    )


def lakeloop(*args: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `lakeloop` CLI as a user would, in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def user_environment(raw: dict, directory: Path) -> dict:
    """A user's shell for the CLI: this configuration (written under directory), its storage root, and
    none of the developer's RAY_ADDRESS or MLFLOW_TRACKING_URI (commands find the stack themselves)."""
    conf = write_config(raw, directory / "lakeloop.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "LAKELOOP_CONFIG": str(conf),
        "LAKELOOP_STORAGE_ROOT": raw["storage"]["root"],
    }


def stack_processes(root: Path) -> set[int]:
    """Every process in the recorded services' sessions: what the stack started, grandchildren included."""
    from pipelines.adapters.local_services import STATE_FILE, StackState, session_processes

    state = StackState.read(root / STATE_FILE)
    assert state is not None, f"no stack is running for {root}"
    return {pid for service in state.services for pid in session_processes(service.pid)}


def wait_for(condition: Callable[[], object], timeout: float, every: float = 0.2, ignore: tuple = ()) -> bool:
    """Poll `condition` until it is true (True) or `timeout` seconds pass (False); an exception of a type
    in `ignore` counts as not yet (e.g. a connection refused while a server starts)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except ignore:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie awaiting its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_scenario(module: str, *args: str, timeout: float, env: dict | None = None) -> dict:
    """`python -m <module> args...` in a child process (its own Ray cluster), which prints its facts as
    one JSON line last; the facts, or an assertion error with the end of its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real file system of `size` (mount's `-o size=`) that fills up, unmounted afterwards. Needs
    root, as CI and this machine have; without it the mount fails with mount's own message."""
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
