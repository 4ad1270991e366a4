"""Reference Prem service: a stdlib-only HTTP server implementing the Prem service interfaces.

Runs unchanged inside the test image (``python3 -u /srv/server.py``) or on the host.
Python 3.11, no third-party imports.

Routes:
    GET  /v1/                      -> {"status": true}
    GET  /v1/models                -> OpenAI-style model list
    POST /v1/chat/completions      -> chat completion; ``"stream": true`` gives SSE, one event per token
    POST /v1/embeddings            -> 384-dim deterministic embeddings for a str or list input
    POST /v1/images/generations    -> tiny PNGs as b64_json
    POST /v1/audio/transcriptions  -> {"text": ...} (reads the whole body)
    *    /echo[/anything]          -> JSON with method, path, query, headers and body (base64 + text);
                                      ``?raw=1`` returns the body bytes verbatim, headers in X-Echo-Headers

Knobs (environment):
    REF_PORT (8000), REF_HOST (0.0.0.0), REF_MODEL ("ref-model"),
    REF_INTERFACE ("all" or one of chat, embeddings, text-to-image, audio-to-text: other interfaces 404),
    REF_TOKENS (8), REF_TOKEN_DELAY_S (0.05): stream length and per-token delay,
    REF_READY_DELAY_S (0): do not bind the port until this many seconds passed (like model loading),
    REF_CRASH_AFTER_S (unset): exit with REF_CRASH_CODE (3) after that many seconds, 0 = at start.
Per request, the chat body may carry "ref_tokens" / "ref_token_delay_s" to override the knobs,
and "max_tokens" caps the token count.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import struct
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

EMBEDDING_DIM = 384
FILLER_WORDS = ["this", "is", "a", "reference", "reply", "from", "the", "prem", "test", "service"]
INTERFACES = {
    "chat": "/v1/chat/completions",
    "embeddings": "/v1/embeddings",
    "text-to-image": "/v1/images/generations",
    "audio-to-text": "/v1/audio/transcriptions",
}


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


MODEL = os.environ.get("REF_MODEL", "ref-model")
INTERFACE = os.environ.get("REF_INTERFACE", "all").strip() or "all"
TOKENS = _env_int("REF_TOKENS", 8)
TOKEN_DELAY_S = _env_float("REF_TOKEN_DELAY_S", 0.05)


def log(msg: str) -> None:
    sys.stdout.write(f"{msg}\n")
    sys.stdout.flush()


def embed(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """Deterministic unit vector derived from sha256 of the text."""
    raw = b""
    counter = 0
    while len(raw) < dim * 4:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    ints = struct.unpack(f"<{dim}I", raw[: dim * 4])
    vec = [(i / 0xFFFFFFFF) * 2.0 - 1.0 for i in ints]
    norm = sum(v * v for v in vec) ** 0.5 or 1.0
    return [round(v / norm, 8) for v in vec]


def reply_tokens(messages: Any, count: int) -> list[str]:
    """Echo the last user message's words, then filler words; *count* tokens, spaces between them."""
    last_user = ""
    if isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict) and msg.get("role") == "user" and isinstance(msg.get("content"), str):
                last_user = msg["content"]
    words = last_user.split()
    while len(words) < count:
        words.extend(FILLER_WORDS)
    words = words[: max(count, 0)]
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


def tiny_png(seed: int) -> bytes:
    """A valid 1x1 RGB PNG whose colour depends on *seed*."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pixel = bytes([0, seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(pixel))
        + chunk(b"IEND", b"")
    )


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Token streams are many small writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms per reply.
    disable_nagle_algorithm = True
    server_version = "premd-ref-service/1"

    def log_message(self, format: str, *args: Any) -> None:
        log(f"ref-service {self.address_string()} {format % args}")

    # ---------------------------------------------------------------- plumbing
    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send_bytes(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": {"message": message, "type": "invalid_request_error", "code": status}})

    def _json_body(self, body: bytes) -> dict[str, Any] | None:
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            self._error(400, "body is not valid JSON")
            return None
        if not isinstance(data, dict):
            self._error(400, "body must be a JSON object")
            return None
        return data

    def _interface_enabled(self, path: str) -> bool:
        return INTERFACE == "all" or INTERFACES.get(INTERFACE) == path

    # ---------------------------------------------------------------- dispatch
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path in ("/v1/", "/v1"):
            self._send_json(200, {"status": True})
        elif path == "/v1/models":
            self._send_json(
                200,
                {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "premd-test"}]},
            )
        elif path == "/echo" or path.startswith("/echo/"):
            self._echo(self._read_body())
        else:
            self._error(404, f"no route {path}")

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        body = self._read_body()
        if path == "/echo" or path.startswith("/echo/"):
            self._echo(body)
            return
        routes = {
            "/v1/chat/completions": self._chat,
            "/v1/embeddings": self._embeddings,
            "/v1/images/generations": self._images,
            "/v1/audio/transcriptions": self._transcriptions,
        }
        handler = routes.get(path.rstrip("/") or path)
        if handler is None or not self._interface_enabled(path.rstrip("/")):
            self._error(404, f"no route {path}")
            return
        handler(body)

    do_PUT = do_POST
    do_PATCH = do_POST

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/echo" or path.startswith("/echo/"):
            self._echo(self._read_body())
        else:
            self._error(404, f"no route {path}")

    # ---------------------------------------------------------------- routes
    def _echo(self, body: bytes) -> None:
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        headers = {k: v for k, v in self.headers.items()}
        if query.get("raw") == ["1"]:
            self._send_bytes(
                200,
                body,
                self.headers.get("Content-Type", "application/octet-stream"),
                {"X-Echo-Headers": json.dumps(headers), "X-Echo-Method": self.command},
            )
            return
        self._send_json(
            200,
            {
                "method": self.command,
                "path": split.path,
                "query": {k: v if len(v) > 1 else v[0] for k, v in query.items()},
                "headers": headers,
                "length": len(body),
                "body_b64": base64.b64encode(body).decode(),
                "body_text": body.decode("utf-8", errors="replace"),
            },
        )

    def _chat(self, body: bytes) -> None:
        req = self._json_body(body)
        if req is None:
            return
        count = int(req.get("ref_tokens", TOKENS))
        if isinstance(req.get("max_tokens"), int) and req["max_tokens"] > 0:
            count = min(count, req["max_tokens"])
        delay = float(req.get("ref_token_delay_s", TOKEN_DELAY_S))
        tokens = reply_tokens(req.get("messages"), count)
        model = str(req.get("model") or MODEL)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not req.get("stream"):
            self._send_json(
                200,
                {
                    "id": completion_id,
                    "model": model,
                    "object": "chat.completion",
                    "created": created,
                    "choices": [
                        {
                            "role": "assistant",
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, token in enumerate(tokens):
                if i > 0 and delay > 0:
                    time.sleep(delay)  # simulated generation time between tokens
                chunk = {
                    "id": completion_id,
                    "model": model,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"role": "assistant", "content": token},
                            "finish_reason": "stop" if i == len(tokens) - 1 else None,
                        }
                    ],
                }
                self._write_chunk(f"event: completion\ndata: {json.dumps(chunk)}\n\n".encode())
            self._write_chunk(b"event: done\ndata: [DONE]\n\n")
            self._write_chunk(b"")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _embeddings(self, body: bytes) -> None:
        req = self._json_body(body)
        if req is None:
            return
        raw = req.get("input")
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and all(isinstance(t, str) for t in raw):
            texts = list(raw)
        else:
            self._error(400, "input must be a string or a list of strings")
            return
        self._send_json(
            200,
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": embed(t)} for i, t in enumerate(texts)],
                "model": str(req.get("model") or MODEL),
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            },
        )

    def _images(self, body: bytes) -> None:
        req = self._json_body(body)
        if req is None:
            return
        n = int(req.get("n") or 1)
        seed = int.from_bytes(hashlib.sha256(str(req.get("prompt", "")).encode()).digest()[:3], "big")
        self._send_json(
            200,
            {
                "created": int(time.time()),
                "data": [{"b64_json": base64.b64encode(tiny_png(seed + i)).decode()} for i in range(n)],
            },
        )

    def _transcriptions(self, body: bytes) -> None:
        digest = hashlib.sha256(body).hexdigest()[:12]
        self._send_json(200, {"text": f"reference transcription of {len(body)} bytes ({digest})"})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def _crash(code: int) -> None:
    log(f"ref-service crashing with code {code}")
    os._exit(code)


def main() -> None:
    host = os.environ.get("REF_HOST", "0.0.0.0")
    port = _env_int("REF_PORT", 8000)
    ready_delay = _env_float("REF_READY_DELAY_S", 0.0)
    crash_after = os.environ.get("REF_CRASH_AFTER_S", "").strip()
    crash_code = _env_int("REF_CRASH_CODE", 3)
    log(f"ref-service starting (pid {os.getpid()}, interface {INTERFACE}, model {MODEL})")

    def _on_signal(signum: int, _frame: Any) -> None:
        log(f"ref-service stopping on signal {signum}")
        os._exit(0)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    if crash_after:
        seconds = float(crash_after)
        if seconds <= 0:
            _crash(crash_code)
        timer = threading.Timer(seconds, _crash, args=(crash_code,))
        timer.daemon = True
        timer.start()
    if ready_delay > 0:
        log(f"ref-service loading model for {ready_delay}s")
        time.sleep(ready_delay)  # simulated model loading before binding, like prem-services
    server = Server((host, port), Handler)
    log(f"ref-service listening on {host}:{server.server_address[1]}")
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
