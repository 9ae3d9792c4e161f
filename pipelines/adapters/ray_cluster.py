"""Connecting to Ray: one place decides whether to join a cluster or start a local one."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import ray

from pipelines.core.config import LakeloopConfig


def init_kwargs(config: LakeloopConfig) -> dict:
    address = config.ray.address or "local"
    kwargs: dict = {"address": address, "logging_level": logging.WARNING, "log_to_driver": True}
    if address == "local":
        # A fresh local cluster: without an explicit address Ray would silently join any running one.
        # The dashboard hosts the State API, which Ray Train's placement-group cleaner needs to free
        # the resources of Tune trials that ASHA stops; keep it on loopback.
        kwargs.update(include_dashboard=True, dashboard_host="127.0.0.1")
        if config.ray.num_cpus:
            kwargs["num_cpus"] = config.ray.num_cpus
        if config.ray.object_store_memory_mb:
            kwargs["object_store_memory"] = config.ray.object_store_memory_mb * 1024 * 1024
    return kwargs


def secure_auth_token() -> Path | None:
    """Ray writes its token file (~/.ray/auth_token) readable by everyone on the machine (mode 0644);
    anyone holding the token can submit jobs. Make it the owner's alone."""
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if path.exists() and path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path if path.exists() else None


def disconnect() -> None:
    """Close this process's Ray connection, if it has one (Ray would otherwise close it at exit), and
    the workers' progress bars this driver still draws."""
    if ray.is_initialized():
        ray.shutdown()
    close_worker_progress_bars()


def close_worker_progress_bars() -> None:
    """A driver redraws its workers' Ray Data progress bars; a bar whose worker ended before closing it
    (a Train worker's validation dataset) stays open, and Ray's patched print() redraws it on every
    later print, wherever stderr points by then: the demo's console after its log, two lines a run."""
    from ray.experimental import tqdm_ray

    manager = tqdm_ray._manager  # None until a worker's bar reached this process
    if manager is None:
        return
    with manager.lock:
        for group in manager.bar_groups.values():
            for bar in group.bars_by_uuid.values():
                bar.bar.close()
        manager.bar_groups.clear()


@contextmanager
def ray_session(config: LakeloopConfig) -> Iterator[str | None]:
    """Use the Ray connection the caller already has, else open one and close it afterwards. Yields
    the dashboard URL of a local cluster it started, else None (the cluster's is ray.dashboard)."""
    if ray.is_initialized():
        yield None
        return
    context = ray.init(**init_kwargs(config))
    secure_auth_token()
    try:
        yield f"http://{context.dashboard_url}" if not config.ray.address and context.dashboard_url else None
    finally:
        ray.shutdown()
