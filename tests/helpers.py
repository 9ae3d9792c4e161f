"""Shared test helpers (importable as tests.helpers)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "conf" / "lakeloop.yaml"


def demo_raw_config(data_root: Path) -> dict:
    """The shipped demo config, with storage under data_root."""
    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    raw["storage"]["root"] = str(data_root)
    return raw


def write_config(raw: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
