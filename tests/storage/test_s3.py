"""s3:// against moto's real S3 server on 127.0.0.1."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from storage_helpers import S3Server, cache_entries, model_files, with_env

from isvc.storage.errors import ArchiveError, MissingConfig, StorageAuthError, StorageNotFound, UnsafeArchive
from isvc.storage.initializer import fetch, resolve_model_dir
from isvc.storage.settings import FileFilter, StorageSettings


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    name = f"models-{uuid.uuid4().hex[:8]}"
    s3_server.client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_settings(settings: StorageSettings, s3_server: S3Server) -> StorageSettings:
    return with_env(settings, **s3_server.env())


def test_folder_prefix_is_fetched_with_its_layout(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    s3_server.upload_folder(bucket, "llama/tiny", model_dir)
    s3_server.client.put_object(
        Bucket=bucket, Key="llama/tiny-other/config.json", Body=b"{}"
    )  # same prefix, other folder
    path = fetch(f"s3://{bucket}/llama/tiny", settings=s3_settings)
    assert model_files(path) == model_files(model_dir)


def test_resolve_model_dir_fetches_and_validates(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    s3_server.upload_folder(bucket, "tiny", model_dir)
    path = resolve_model_dir(f"s3://{bucket}/tiny", settings=s3_settings)
    assert (path / "config.json").is_file()


def test_mount_path_maps_into_the_fetched_bucket_prefix(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    s3_server.upload_folder(bucket, "models/Llama-2-7b-chat-hf", model_dir)
    path = resolve_model_dir(
        "/mnt/models/Llama-2-7b-chat-hf", storage_uri=f"s3://{bucket}/models", settings=s3_settings
    )
    assert path.name == "Llama-2-7b-chat-hf" and (path / "model.safetensors").is_file()


def test_single_archive_object_is_unpacked(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(model_dir, arcname=".")
    s3_server.client.put_object(Bucket=bucket, Key="archives/tiny.tar.gz", Body=buffer.getvalue())
    path = fetch(f"s3://{bucket}/archives/tiny.tar.gz", settings=s3_settings)
    assert model_files(path) == model_files(model_dir)


def test_allow_and_ignore_patterns(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    s3_server.upload_folder(bucket, "tiny", model_dir)
    filtered = replace(s3_settings, file_filter=FileFilter(allow=("*.json",), ignore=("tokenizer_config.json",)))
    path = fetch(f"s3://{bucket}/tiny", settings=filtered)
    assert sorted(model_files(path)) == ["config.json", "tokenizer.json"]
    full = fetch(f"s3://{bucket}/tiny", settings=s3_settings)  # a different cache entry
    assert "model.safetensors" in model_files(full)


def test_missing_bucket(s3_settings: StorageSettings) -> None:
    with pytest.raises(StorageNotFound, match="bucket 'no-such-bucket' does not exist"):
        fetch("s3://no-such-bucket/llama", settings=s3_settings)
    assert cache_entries(s3_settings) == []


def test_missing_key_suggests_what_is_there(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    s3_server.upload_folder(bucket, "models/Llama-2-7b-chat-hf", model_dir)
    with pytest.raises(StorageNotFound) as info:
        fetch(f"s3://{bucket}/models/Llama-2-7b-chat", settings=s3_settings)
    assert f"no objects at 's3://{bucket}/models/Llama-2-7b-chat'" in str(info.value)
    assert f"s3://{bucket}/models/Llama-2-7b-chat-hf" in info.value.hint
    assert cache_entries(s3_settings) == []


def test_missing_config_in_fetched_folder_is_reported_and_not_cached(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, model_dir: Path
) -> None:
    s3_server.upload_folder(bucket, "models/Llama-2-7b-chat-hf", model_dir)
    with pytest.raises(MissingConfig) as info:
        resolve_model_dir(f"s3://{bucket}/models", settings=s3_settings)
    assert "it holds: Llama-2-7b-chat-hf/" in str(info.value)
    assert f"'s3://{bucket}/models/Llama-2-7b-chat-hf'" in info.value.hint
    assert cache_entries(s3_settings) == []


def test_zip_slip_and_corrupt_archives_are_not_cached(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    s3_server.client.put_object(Bucket=bucket, Key="evil.tar.gz", Body=buffer.getvalue())
    s3_server.client.put_object(Bucket=bucket, Key="broken.tgz", Body=b"not gzip at all")
    with pytest.raises(UnsafeArchive):
        fetch(f"s3://{bucket}/evil.tar.gz", settings=s3_settings)
    with pytest.raises(ArchiveError, match="corrupt"):
        fetch(f"s3://{bucket}/broken.tgz", settings=s3_settings)
    assert cache_entries(s3_settings) == []


def test_key_that_climbs_out_is_refused(s3_server: S3Server, bucket: str, s3_settings: StorageSettings) -> None:
    s3_server.client.put_object(Bucket=bucket, Key="m/../../escape.txt", Body=b"x")
    s3_server.client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    with pytest.raises(UnsafeArchive, match="outside the destination"):
        fetch(f"s3://{bucket}/m", settings=s3_settings)
    assert cache_entries(s3_settings) == []


@pytest.fixture
def s3_auth(s3_server: S3Server) -> Iterator[dict[str, str]]:
    """Turn on moto's IAM checks; yield a valid key pair allowed to read S3."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=s3_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    user = f"reader-{uuid.uuid4().hex[:6]}"
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="read", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    httpx.post(f"{s3_server.endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
    try:
        yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
    finally:
        httpx.post(f"{s3_server.endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()


def test_wrong_credentials_are_an_auth_error(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, s3_auth: dict[str, str]
) -> None:
    good = with_env(s3_settings, **s3_auth)
    # the fixture's "testing" key is not an IAM user: upload with the good one
    import boto3

    writer = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=s3_auth["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_auth["AWS_SECRET_ACCESS_KEY"],
    )
    writer.put_object(Bucket=bucket, Key="tiny/config.json", Body=b"{}")
    wrong = with_env(s3_settings, AWS_ACCESS_KEY_ID="AKIAWRONGWRONGWRONG0", AWS_SECRET_ACCESS_KEY="nope")
    with pytest.raises(StorageAuthError) as info:
        fetch(f"s3://{bucket}/tiny", settings=wrong)
    assert "InvalidAccessKeyId" in str(info.value) and "AWS_ACCESS_KEY_ID" in info.value.hint
    assert cache_entries(s3_settings) == []
    assert model_files(fetch(f"s3://{bucket}/tiny", settings=good)) == {"config.json": b"{}"}


def test_no_credentials_is_an_auth_error_and_anonymous_access_needs_none(
    s3_server: S3Server, bucket: str, settings: StorageSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Keep boto3's default credential chain from finding anything on this machine.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3_server.client.put_object(Bucket=bucket, Key="public/config.json", Body=b"{}", ACL="public-read")
    bare = with_env(settings, AWS_ENDPOINT_URL=s3_server.endpoint, AWS_REGION="us-east-1")
    with pytest.raises(StorageAuthError, match="no usable AWS credentials") as info:
        fetch(f"s3://{bucket}/public", settings=bare)
    assert "awsAnonymousCredential=true" in info.value.hint
    anonymous = with_env(bare, awsAnonymousCredential="true")
    assert model_files(fetch(f"s3://{bucket}/public", settings=anonymous)) == {"config.json": b"{}"}


def test_legacy_s3_endpoint_env(s3_server: S3Server, bucket: str, settings: StorageSettings) -> None:
    s3_server.client.put_object(Bucket=bucket, Key="m/config.json", Body=b"{}")
    host = s3_server.endpoint.removeprefix("http://")
    legacy = with_env(
        settings,
        S3_ENDPOINT=host,
        S3_USE_HTTPS="0",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
    )
    assert model_files(fetch(f"s3://{bucket}/m", settings=legacy)) == {"config.json": b"{}"}


@pytest.mark.parametrize("concurrency", ["1", "4"])
def test_many_files_fetch_the_same_in_parallel_or_not(
    s3_server: S3Server, bucket: str, s3_settings: StorageSettings, tmp_path: Path, concurrency: str
) -> None:
    shards = {f"model-{i:05d}-of-00012.safetensors": bytes([i]) * (1000 + i) for i in range(12)}
    for name, data in shards.items():
        s3_server.client.put_object(Bucket=bucket, Key=f"sharded/{name}", Body=data)
    settings = with_env(s3_settings, S3_MAX_FILE_CONCURRENCY=concurrency)
    assert model_files(fetch(f"s3://{bucket}/sharded", settings=settings)) == shards
