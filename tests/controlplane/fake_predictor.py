"""A real, tiny predictor process for control-plane tests (stdlib only, starts in ~50 ms).

Speaks just enough of `isvc serve`: ``--model_name``, ``--model_dir``, ``--http_port``
(or ``--port``/``$PORT``); ``GET /v2/health/ready``; ``POST /v1/completions`` and
``/openai/v1/completions`` (SSE when ``"stream": true``; chunked request bodies too). Test knobs: ``--ready-after S``,
``--exit-after S`` with ``--exit-code N``, ``--require-dir`` (fail if model_dir is missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model_name", default="fake")
    p.add_argument("--model_dir", default="")
    p.add_argument("--http_port", "--port", dest="port", type=int, default=int(os.environ.get("PORT", "0") or 0))
    p.add_argument("--ready-after", type=float, default=0.0)
    p.add_argument("--exit-after", type=float, default=None)
    p.add_argument("--exit-code", type=int, default=1)
    p.add_argument("--require-dir", action="store_true")
    p.add_argument("--tokens", type=int, default=5)
    p.add_argument("--token-delay", type=float, default=0.0)
    args, unknown = p.parse_known_args()
    if args.require_dir and not os.path.isdir(args.model_dir):
        print(f"fake predictor: model_dir {args.model_dir!r} does not exist", flush=True)
        return 2
    started = time.monotonic()
    print(
        f"fake predictor {args.model_name} on port {args.port}; model_dir={args.model_dir}; extra={unknown}", flush=True
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *a: object) -> None:
            pass

        def _json(self, code: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path in ("/v2/health/ready", f"/v2/models/{args.model_name}/ready", "/v1/models", "/"):
                ok = time.monotonic() - started >= args.ready_after
                self._json(200 if ok else 503, {"ready": ok, "model_dir": args.model_dir, "pid": os.getpid()})
            elif self.path == "/info":
                self._json(
                    200,
                    {
                        "model_name": args.model_name,
                        "model_dir": args.model_dir,
                        "pid": os.getpid(),
                        "port": args.port,
                        "env_threads": os.environ.get("OMP_NUM_THREADS"),
                        "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                        "extra": unknown,
                    },
                )
            else:
                self._json(404, {"error": f"no route {self.path}"})

        def _body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("content-length", "0")))
            parts = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(parts)

        def do_POST(self) -> None:
            try:
                body = json.loads(self._body() or b"{}")
            except (ValueError, ConnectionError):
                return
            if not self.path.endswith("/completions"):
                self._json(404, {"error": f"no route {self.path}"})
                return
            words = [f" w{i}" for i in range(int(body.get("max_tokens", args.tokens)))]
            if not body.get("stream"):
                self._json(
                    200,
                    {
                        "object": "text_completion",
                        "model": args.model_name,
                        "choices": [{"index": 0, "text": "".join(words), "finish_reason": "length"}],
                    },
                )
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for w in words:
                chunk = {"object": "text_completion", "model": args.model_name, "choices": [{"index": 0, "text": w}]}
                data = f"data: {json.dumps(chunk)}\n\n".encode()
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                time.sleep(args.token_delay)
            done = b"data: [DONE]\n\n"
            self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
            self.wfile.flush()

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.exit_after is not None:

        def die() -> None:
            time.sleep(args.exit_after)
            print(f"fake predictor: exiting with {args.exit_code}", flush=True)
            os._exit(args.exit_code)

        threading.Thread(target=die, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
