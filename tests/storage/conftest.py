"""Shared fixtures: a tiny HF model folder, isolated settings, and real servers on 127.0.0.1.

Servers: moto's ThreadedMotoServer (S3), gcp-storage-emulator (GCS) and a scriptable
http.server (plain files, archives, stalls, status codes). All bind port 0 and are ready
when the fixture returns.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_helpers import FakeHub, FileServer, GcsServer, S3Server, build_model_folder

from isvc.storage.settings import StorageSettings


@pytest.fixture(scope="session")
def model_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("template") / "tiny-llama")


@pytest.fixture
def model_dir(tmp_path: Path, model_template: Path) -> Path:
    """A fresh copy of the tiny model, free to break."""
    return Path(shutil.copytree(model_template, tmp_path / "tiny-llama"))


@pytest.fixture
def settings(tmp_path: Path) -> StorageSettings:
    """Isolated cache and PVC root, short timeouts, near-zero backoff, an empty environment."""
    return StorageSettings(
        cache_dir=tmp_path / "cache",
        pvc_root=tmp_path / "pvc",
        timeout_s=10.0,
        max_attempts=2,
        backoff_s=0.01,
        env={},
    )


@pytest.fixture
def http_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield S3Server(endpoint=endpoint, client=client)
    server.stop()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    from gcp_storage_emulator.server import Server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    server = Server("127.0.0.1", 0, in_memory=True)
    server._api.daemon = True  # never keep pytest alive
    server.start()
    port = server._api._httpd.server_address[1]
    host = f"127.0.0.1:{port}"
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": f"http://{host}"}
    )
    yield GcsServer(host=host, client=client)
    server.stop()


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    yield server
    server.close()
