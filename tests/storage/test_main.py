"""``isvc storage-init`` / ``python -m isvc.storage`` as separate processes, as the control plane runs it."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from storage_helpers import FileServer, Route, model_files

from isvc.cli import main as isvc_main


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ISVC_CACHE_DIR": str(tmp_path / "cache"),
        "ISVC_PVC_ROOT": str(tmp_path / "pvc"),
        "ISVC_CONFIG": "",
        "ISVC_STORAGE_BACKOFF_S": "0.01",
        "HOME": str(tmp_path / "home"),
    }


def storage_init(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "isvc.storage", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str, float]:
    started = time.monotonic()
    proc = storage_init(args, env)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err, time.monotonic() - started


def test_fetch_validate_and_cache_hit(
    http_server: FileServer, model_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    http_server.routes["/tiny.tar.gz"] = Route(tar_gz(model_dir))
    uri = f"{http_server.url}/tiny.tar.gz"
    code, out, err, _ = run([uri, str(tmp_path / "dest1"), "--validate"], env)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "dest1")
    assert model_files(tmp_path / "dest1") == model_files(model_dir)
    assert "fetched" in err and "done in" in err  # structured log lines, not a progress bar (no TTY)
    assert "HTTP Request" not in err and "\r" not in err
    code, _, err, _ = run([uri, str(tmp_path / "dest2")], env)
    assert code == 0 and "cached" in err
    assert http_server.hits["/tiny.tar.gz"] == 1


def test_errors_exit_1_with_message_and_hint(env: dict[str, str], tmp_path: Path) -> None:
    code, _, err, _ = run(["ftp://host/llama", str(tmp_path / "d")], env)
    assert code == 1
    assert "error: storageUri 'ftp://host/llama' uses the unsupported scheme 'ftp://'" in err
    assert "hint:" in err


def test_pairs_are_required(env: dict[str, str]) -> None:
    code, _, err, _ = run(["s3://only-a-uri"], env)
    assert code == 2 and "pairs" in err


def test_isvc_cli_dispatches_storage_init(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dest = tmp_path / "dest"
    assert isvc_main(["storage-init", f"file://{model_dir}", str(dest), "--validate"]) == 0
    assert capsys.readouterr().out.strip() == str(dest)
    assert dest.resolve() == model_dir.resolve()


def test_two_predictors_starting_together_download_once(
    http_server: FileServer, model_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    http_server.routes["/tiny.tar.gz"] = Route(tar_gz(model_dir), delay_s=1.0)
    uri = f"{http_server.url}/tiny.tar.gz"
    procs = [storage_init([uri, str(tmp_path / f"dest{i}")], env) for i in range(2)]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert http_server.hits["/tiny.tar.gz"] == 1
    assert model_files(tmp_path / "dest0") == model_files(tmp_path / "dest1") == model_files(model_dir)


def test_killed_download_never_looks_complete(
    http_server: FileServer, model_dir: Path, env: dict[str, str], tmp_path: Path
) -> None:
    http_server.routes["/tiny.tar.gz"] = Route(tar_gz(model_dir), stall_first=1)
    uri = f"{http_server.url}/tiny.tar.gz"
    proc = storage_init([uri, str(tmp_path / "dest")], {**env, "ISVC_STORAGE_TIMEOUT_S": "30"})
    deadline = time.monotonic() + 30
    while http_server.hits["/tiny.tar.gz"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it write the half body it got
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    storage = tmp_path / "cache" / "storage"
    assert [p.name for p in storage.iterdir() if not p.name.startswith(".")] == []  # no entry
    assert not (tmp_path / "dest").exists()
    assert len(list((storage / ".tmp").iterdir())) == 1  # the leftover, swept by the next run
    code, _, err, _ = run([uri, str(tmp_path / "dest"), "--validate"], env)
    assert code == 0, err
    assert list((storage / ".tmp").iterdir()) == []
    assert model_files(tmp_path / "dest") == model_files(model_dir)


def test_importing_storage_loads_no_heavy_sdk() -> None:
    """The control plane imports isvc.storage; torch and the cloud SDKs load only when a scheme needs them."""
    heavy = ("torch", "transformers", "boto3", "google.cloud.storage", "huggingface_hub", "httpx")
    code = f"import sys, isvc.storage; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
