"""Helpers shared by the storage tests: a tiny HF model folder, cache inspection, server wrappers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from isvc.storage.settings import StorageSettings


def build_model_folder(folder: Path) -> Path:
    """config.json + model.safetensors (torch) + tokenizer.json: what a tiny HF causal LM ships."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "vocab_size": 4}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"model.embed_tokens.weight": torch.zeros(4, 8)}, str(folder / "model.safetensors"))
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2, "!": 3}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return folder


def model_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def with_env(settings: StorageSettings, **env: str) -> StorageSettings:
    return replace(settings, env={**settings.env, **env})


def cache_entries(settings: StorageSettings) -> list[str]:
    """Complete entries plus anything left in the temp area: what a user would see with ls."""
    root = settings.cache_dir / "storage"
    if not root.is_dir():
        return []
    entries = [p.name for p in root.iterdir() if not p.name.startswith(".")]
    tmp = root / ".tmp"
    leftovers = [f".tmp/{p.name}" for p in tmp.iterdir()] if tmp.is_dir() else []
    return sorted(entries + leftovers)


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall_first: int = 0
    """The first N requests send half the body and then go silent."""
    delay_s: float = 0.0
    """Wait this long before answering (a slow but healthy server)."""


class FileServer:
    """A local http.server with scripted routes; counts hits and records request headers."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._serve(self, send_body=True)

            def do_HEAD(self) -> None:
                outer._serve(self, send_body=False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()

    def _serve(self, handler: BaseHTTPRequestHandler, *, send_body: bool) -> None:
        path = handler.path
        with self._lock:
            self.hits[path] += 1
            count = self.hits[path]
            self.seen_headers.append(dict(handler.headers))
        route = self.routes.get(path) or self.routes.get(path.split("?", 1)[0])
        if route is None:
            route = Route(body=b"not found", status=404)
        if route.delay_s:
            self.release.wait(route.delay_s)
        try:
            handler.send_response(route.status)
            for name, value in route.headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(route.body)))
            handler.end_headers()
            if not send_body:
                return
            if count <= route.stall_first:
                handler.wfile.write(route.body[: len(route.body) // 2])
                handler.wfile.flush()
                self.release.wait(10)  # silent until the test ends
                handler.close_connection = True
                return
            handler.wfile.write(route.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class S3Server:
    endpoint: str
    client: Any

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def upload_folder(self, bucket: str, prefix: str, folder: Path) -> None:
        for rel, data in model_files(folder).items():
            self.client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}".lstrip("/"), Body=data)


@dataclass
class GcsServer:
    host: str
    client: Any

    def upload_folder(self, bucket: str, prefix: str, folder: Path) -> None:
        target = self.client.bucket(bucket)
        for rel, data in model_files(folder).items():
            target.blob(f"{prefix}/{rel}".lstrip("/")).upload_from_string(data)


class FakeHub:
    """Just enough of the Hugging Face Hub HTTP API for snapshot_download, on 127.0.0.1.

    Serves ``repos`` ({"org/name": {file: bytes}}) at one commit; ``gated`` repos answer
    403 GatedRepo; unknown repos 404 RepoNotFound; unknown revisions 404 RevisionNotFound.
    """

    SHA = "a" * 40

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, bytes]] = {}
        self.gated: set[str] = set()
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                outer._serve(self, send_body=True)

            def do_HEAD(self) -> None:
                outer._serve(self, send_body=False)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def _serve(self, handler: BaseHTTPRequestHandler, *, send_body: bool) -> None:
        from urllib.parse import unquote, urlsplit

        path = unquote(urlsplit(handler.path).path)
        self.paths.append(f"{handler.command} {handler.path}")
        self.authorizations.append(handler.headers.get("Authorization"))
        status, headers, body = self._route(path)
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if send_body:
            handler.wfile.write(body)

    def _route(self, path: str) -> tuple[int, dict[str, str], bytes]:
        import hashlib

        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            repo, rest = "/".join(parts[2:4]), parts[4:]
        else:
            repo, rest = "/".join(parts[0:2]), parts[2:]
        if repo in self.gated:
            return 403, {"X-Error-Code": "GatedRepo", "Content-Type": "application/json"}, b'{"error": "gated"}'
        files = self.repos.get(repo)
        if files is None:
            return 404, {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, b'{"error": "not found"}'
        if rest and rest[0] in ("revision", "tree", "resolve") and len(rest) > 1 and rest[1] not in ("main", self.SHA):
            return 404, {"X-Error-Code": "RevisionNotFound", "Content-Type": "application/json"}, b'{"error": "rev"}'
        if parts[:2] == ["api", "models"] and rest[:1] == ["revision"]:
            info = {"id": repo, "sha": self.SHA, "siblings": [{"rfilename": f} for f in files]}
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        if parts[:2] == ["api", "models"] and rest[:1] == ["tree"]:
            tree = [
                {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for f, d in files.items()
            ]
            return 200, {"Content-Type": "application/json"}, json.dumps(tree).encode()
        if rest[:1] == ["resolve"]:
            name = "/".join(rest[2:])
            if name not in files:
                return 404, {"X-Error-Code": "EntryNotFound"}, b""
            data = files[name]
            etag = f'"{hashlib.sha1(data).hexdigest()}"'
            return 200, {"X-Repo-Commit": self.SHA, "ETag": etag, "Content-Type": "application/octet-stream"}, data
        return 404, {}, b""

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
