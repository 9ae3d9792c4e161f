"""Connecting to Ray: one place decides whether to join a cluster or start a local one."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def ray_session(config: LakeloopConfig) -> Iterator[str | None]:
    """Use the Ray connection the caller already has, else open one and close it afterwards. Yields
    the dashboard URL of a local cluster it started, else None (the cluster's is ray.dashboard)."""
    if ray.is_initialized():
        yield None
        return
    context = ray.init(**init_kwargs(config))
    try:
        yield f"http://{context.dashboard_url}" if not config.ray.address and context.dashboard_url else None
    finally:
        ray.shutdown()
