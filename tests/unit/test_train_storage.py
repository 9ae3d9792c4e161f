"""Ray Train's checkpoint storage gets the configured storage options (or refuses them, naming them)."""

from __future__ import annotations

import pytest
from pyarrow import fs

from pipelines.adapters.delta import train_filesystem
from pipelines.core.config import StorageConfig
from pipelines.core.errors import ConfigError


def test_a_local_root_or_no_options_leaves_ray_to_resolve_the_path() -> None:
    assert train_filesystem(StorageConfig(root="/data/lake"), "/data/lake/ray_results") == (
        None,
        "/data/lake/ray_results",
    )
    assert train_filesystem(StorageConfig(root="s3://b/lake"), "s3://b/lake/ray_results") == (
        None,
        "s3://b/lake/ray_results",
    )


def test_an_endpoint_only_in_the_options_reaches_the_filesystem() -> None:
    storage = StorageConfig(
        root="s3://bucket/lake",
        storage_options={"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true", "AWS_REGION": "eu-1"},
    )
    filesystem, path = train_filesystem(storage, "s3://bucket/lake/ray_results")
    assert isinstance(filesystem, fs.S3FileSystem) and path == "bucket/lake/ray_results"
    settings = filesystem.__reduce__()[1][0]  # what a Ray worker rebuilds the filesystem from
    assert (settings["endpoint_override"], settings["scheme"], settings["region"]) == ("127.0.0.1:9000", "http", "eu-1")


def test_lower_case_keys_and_commit_only_options_are_accepted() -> None:
    storage = StorageConfig(
        root="s3://bucket/lake", storage_options={"endpoint": "minio:9000", "aws_s3_locking_provider": "dynamodb"}
    )
    filesystem, _ = train_filesystem(storage, "s3://bucket/lake/ray_results")
    settings = filesystem.__reduce__()[1][0]
    assert (settings["endpoint_override"], settings["scheme"]) == ("minio:9000", "https")


def test_an_option_pyarrow_cannot_take_is_refused_by_name() -> None:
    storage = StorageConfig(root="s3://bucket/lake", storage_options={"AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "true"})
    with pytest.raises(ConfigError, match="virtual_hosted_style_request"):
        train_filesystem(storage, "s3://bucket/lake/ray_results")
    with pytest.raises(ConfigError, match="only for s3://"):
        train_filesystem(StorageConfig(root="gs://b/l", storage_options={"service_account": "x"}), "gs://b/l/r")
