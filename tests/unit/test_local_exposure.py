"""What lakeloop does about Ray's local defaults that expose a machine: HAProxy's stats page and
exporter on every interface with a world-writable admin socket, and a token file everyone can read."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.adapters.ray_cluster import secure_auth_token
from pipelines.adapters.ray_serve import LOOPBACK_HAPROXY

# The shape of the config Ray 2.60's Serve generates for HAProxy (the parts the wrapper rewrites).
RAY_HAPROXY_CONFIG = """global
    stats socket /tmp/ray/session/haproxy.sock mode 666 level admin
frontend stats
    bind *:8404
    stats enable
frontend prometheus
    bind :9101
frontend http_frontend
    bind 127.0.0.1:8000
"""


def test_the_haproxy_wrapper_binds_everything_to_loopback_and_closes_the_socket(tmp_path: Path) -> None:
    real = tmp_path / "haproxy"  # stands in for the real binary: records the config it is given
    real.write_text(f'#!/bin/sh\ncp "$2" {tmp_path / "seen.cfg"}\necho "$@" > {tmp_path / "args"}\n')
    real.chmod(0o755)
    wrapper = tmp_path / "wrapper"
    wrapper.write_text(LOOPBACK_HAPROXY.format(python=sys.executable, real=str(real)))
    wrapper.chmod(0o755)
    config = tmp_path / "haproxy.cfg"
    config.write_text(RAY_HAPROXY_CONFIG)

    subprocess.run([str(wrapper), "-f", str(config), "-db"], check=True)

    seen = (tmp_path / "seen.cfg").read_text()
    binds = [line.split()[1] for line in seen.splitlines() if line.strip().startswith("bind")]
    assert binds == ["127.0.0.1:8404", "127.0.0.1:9101", "127.0.0.1:8000"]
    assert " mode 600 " in seen and "mode 666" not in seen
    assert (tmp_path / "args").read_text().split() == ["-f", str(config), "-db"]  # the same arguments


def test_the_ray_token_file_is_made_the_owners_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "auth_token"
    token.write_text("t" * 32)
    token.chmod(0o644)  # as Ray writes it
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert secure_auth_token() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600


def test_no_token_file_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert secure_auth_token() is None


def test_the_wrapper_writer_puts_a_private_executable_where_the_cluster_files_say(tmp_path: Path) -> None:
    """`python -m pipelines.loopback_haproxy DIR`, as cluster/Dockerfile and cluster/aws.yaml run it."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.loopback_haproxy", str(tmp_path / ".lakeloop")],
        capture_output=True,
        text=True,
        check=True,
    )
    wrapper = Path(done.stdout.strip())
    assert wrapper == tmp_path / ".lakeloop" / "haproxy-loopback"
    assert stat.S_IMODE(wrapper.stat().st_mode) == 0o700 and stat.S_IMODE(wrapper.parent.stat().st_mode) == 0o700
    assert "127.0.0.1" in wrapper.read_text() and wrapper.read_text().startswith(f"#!{sys.executable}")
