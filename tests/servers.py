"""Real servers the storage tests start and own: an S3-protocol object store (moto's standalone
server, S3 and DynamoDB over HTTP), a PostgreSQL 15 server and a Redis server (Debian's redis-server,
which `make setup` installs), each on loopback, each a process in a session of its own, stopped by
pid. Credentials and the endpoint reach lakeloop, deltalake, Ray and MLflow the way they reach them in
production: the standard AWS environment variables."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.adapters.local_services import free_port, port_open, stop_pid

POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class ObjectStore:
    pid: int
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use the store: standard AWS variables, read by deltalake, pyarrow
        (Ray Data, Ray Train), boto3 (MLflow's artifact store) alike. The keys are moto's test keys."""
        return {
            "AWS_ACCESS_KEY_ID": "moto-test-key",
            "AWS_SECRET_ACCESS_KEY": "moto-test-secret",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def uri(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_pid(process.pid)
            raise RuntimeError(f"{what} did not start on port {port}")
        time.sleep(0.1)


def start_object_store(log: Path, bucket: str = "lakeloop") -> ObjectStore:
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _wait_for_port(port, process, "moto server")
    store = ObjectStore(process.pid, f"http://127.0.0.1:{port}", bucket)
    import boto3

    env = store.env
    boto3.client(
        "s3",
        endpoint_url=store.endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_REGION"],
    ).create_bucket(Bucket=bucket)
    return store


def start_redis(directory: Path) -> tuple[int, str]:
    """redis-server on a free loopback port, nothing persisted; (pid, redis:// URL)."""
    server = shutil.which("redis-server")
    if server is None:
        raise RuntimeError("redis-server is not installed: `make setup` installs it (cluster/install_debian.sh)")
    port = free_port()
    with (directory / "redis.log").open("w") as out:
        process = subprocess.Popen(
            [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=directory,
            start_new_session=True,
        )
    _wait_for_port(port, process, "redis-server")
    return process.pid, f"redis://127.0.0.1:{port}/0"


@dataclass
class Postgres:
    pid: int
    port: int
    directory: Path

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def _as_postgres_user() -> dict:
    """initdb and postgres refuse to run as root: as root, run them as the `postgres` user."""
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def start_postgres(database: str = "mlflow") -> Postgres:
    """A fresh cluster in a directory of its own (owned by whoever runs the server), trust
    authentication on 127.0.0.1 only, and one database."""
    if not (POSTGRES_BIN / "initdb").exists():
        raise RuntimeError(f"PostgreSQL 15 server binaries not found in {POSTGRES_BIN}")
    directory = Path(tempfile.mkdtemp(prefix="lakeloop-pg-"))
    owner = _as_postgres_user()
    if owner:
        shutil.chown(directory, owner["user"], owner["group"])
    data = directory / "data"
    subprocess.run(
        [str(POSTGRES_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
        **owner,
    )
    port = free_port()
    with (directory / "postgres.log").open("w") as out:
        os.chmod(directory / "postgres.log", 0o666)
        process = subprocess.Popen(
            [str(POSTGRES_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(directory)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **owner,
        )
    _wait_for_port(port, process, "postgres")
    server = Postgres(process.pid, port, directory)
    deadline = time.monotonic() + 30
    while True:  # the port opens before the server accepts connections
        created = subprocess.run(
            [str(POSTGRES_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database],
            capture_output=True,
            text=True,
        )
        if created.returncode == 0:
            return server
        if time.monotonic() > deadline:
            stop_postgres(server)
            raise RuntimeError(f"createdb failed: {created.stderr}")
        time.sleep(0.2)


def stop_postgres(server: Postgres) -> None:
    """Fast shutdown (SIGINT: disconnect clients, then stop), then what stop_pid does if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(server.pid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and os.waitpid(server.pid, os.WNOHANG) == (0, 0):
            time.sleep(0.1)
    stop_pid(server.pid)
    shutil.rmtree(server.directory, ignore_errors=True)
