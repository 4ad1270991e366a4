"""premd's in-image model runtime: loads ``<module>.py:<Class>``, calls ``setup()`` once, serves ``run(**inputs)``.

Standard library only (it is copied into every package image, next to nothing else), Python 3.8 or newer.
Environment: ``PREMD_MODEL`` (``model.py:Model``), ``PREMD_CODE_DIR`` (default: the working directory),
``PORT`` (default 5000), ``PREMD_BIND`` (default 0.0.0.0: the container's network is the boundary).

Routes, both contracts:
- the original model server's: ``GET /ping`` (``PONG`` once ready), ``POST /infer`` (form fields, multipart file
  parts as paths, or a JSON object, passed as ``run(**inputs)``; a str answers text/plain, a path its file,
  bytes application/octet-stream, anything else JSON; an exception answers 500 with the traceback);
- Cog's: ``GET /health-check`` (always 200: ``STARTING``, ``READY`` or ``SETUP_FAILED`` with the setup log),
  ``POST /predictions`` (``{"input": {...}}`` -> ``{"status", "output", "error", "logs", "metrics"}``; a
  failure is ``status: failed`` with the traceback);
- ``GET /v1/`` for premd's scheduler: 200 once ready, 503 before (or after a failed setup).

``setup()`` runs in the background so health can be asked while it runs; ``run()`` calls are serialised (one
prediction at a time), which also makes each prediction's captured log its own.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import importlib
import io
import json
import mimetypes
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RUNTIME_VERSION = "1"
MAX_BODY_BYTES = int(os.environ.get("PREMD_MAX_BODY_BYTES", str(256 * 1024 * 1024)))

STARTING, READY, SETUP_FAILED = "STARTING", "READY", "SETUP_FAILED"
_REAL_STDERR = sys.stderr


class _Tee(io.TextIOBase):
    """Writes to the real stream and to a capture buffer (the prediction's or setup's log)."""

    def __init__(self, real: Any, buffer: io.StringIO) -> None:
        self._real = real
        self._buffer = buffer

    def write(self, text: str) -> int:
        self._buffer.write(text)
        self._real.write(text)
        self._real.flush()
        return len(text)

    def flush(self) -> None:
        self._real.flush()


class Runtime:
    """The loaded model and its state; shared by the request handler threads."""

    def __init__(self, spec: str, code_dir: str) -> None:
        self.spec = spec
        self.code_dir = code_dir
        self.state = STARTING
        self.setup_logs = ""
        self.setup_started_at = time.time()
        self.setup_completed_at: float | None = None
        self.setup_seconds: float | None = None
        self.model: Any = None
        self._run_lock = threading.Lock()
        self._real_stdout = sys.stdout
        self._real_stderr = sys.stderr

    def _captured(self, buffer: io.StringIO) -> tuple[Any, Any]:
        return _Tee(self._real_stdout, buffer), _Tee(self._real_stderr, buffer)

    def load_and_setup(self) -> None:
        buffer = io.StringIO()
        started = time.monotonic()
        with self._run_lock:
            sys.stdout, sys.stderr = self._captured(buffer)
            try:
                module_path, _, class_name = self.spec.partition(".py:")
                if not module_path or not class_name:
                    raise ValueError(f"PREMD_MODEL {self.spec!r} is not <module>.py:<Class>")
                if self.code_dir not in sys.path:
                    sys.path.insert(0, self.code_dir)
                module = importlib.import_module(module_path.replace("/", "."))
                model = getattr(module, class_name)()
                if not callable(getattr(model, "run", None)) and not callable(getattr(model, "predict", None)):
                    raise TypeError(f"{class_name} has neither run() nor predict()")
                setup = getattr(model, "setup", None)
                if callable(setup):
                    setup()
                self.model = model
                self.state = READY
            except BaseException:
                traceback.print_exc()
                self.state = SETUP_FAILED
            finally:
                sys.stdout, sys.stderr = self._real_stdout, self._real_stderr
                self.setup_logs = buffer.getvalue()
                self.setup_seconds = time.monotonic() - started
                self.setup_completed_at = time.time()
        if self.state == READY:
            print(f"premd runtime: {self.spec} ready after {self.setup_seconds:.3f}s", file=self._real_stderr)
        else:
            print(f"premd runtime: setup of {self.spec} failed", file=self._real_stderr)

    def predict(self, inputs: dict[str, Any]) -> tuple[bool, Any, str, float]:
        """(ok, output or traceback, captured log, seconds) of one ``run(**inputs)``."""
        fn = getattr(self.model, "run", None)
        if not callable(fn):
            fn = self.model.predict
        buffer = io.StringIO()
        with self._run_lock:
            started = time.monotonic()
            sys.stdout, sys.stderr = self._captured(buffer)
            try:
                output = fn(**inputs)
                ok = True
            except Exception:
                output = traceback.format_exc()
                print(output, end="", file=sys.stderr)
                ok = False
            finally:
                sys.stdout, sys.stderr = self._real_stdout, self._real_stderr
            return ok, output, buffer.getvalue(), time.monotonic() - started

    def health(self) -> dict[str, Any]:
        setup_status = {STARTING: "starting", READY: "succeeded", SETUP_FAILED: "failed"}[self.state]
        return {
            "status": self.state,
            "setup": {
                "started_at": _iso(self.setup_started_at),
                "completed_at": _iso(self.setup_completed_at),
                "status": setup_status,
                "logs": self.setup_logs,
            },
            "version": {"premd_runtime": RUNTIME_VERSION, "python": ".".join(str(n) for n in sys.version_info[:3])},
        }


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int((ts % 1) * 1000):03d}Z"


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _jsonable(output: Any) -> Any:
    """Cog's output encoding: paths and bytes as data URLs, containers recursively."""
    if isinstance(output, pathlib.Path):
        mime = mimetypes.guess_type(output.name)[0] or "application/octet-stream"
        return _data_url(output.read_bytes(), mime)
    if isinstance(output, (bytes, bytearray)):
        return _data_url(bytes(output), "application/octet-stream")
    if isinstance(output, dict):
        return {str(k): _jsonable(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return [_jsonable(v) for v in output]
    return output


class BadRequest(Exception):
    pass


def _form_inputs(content_type: str, body: bytes, tmpdir: str) -> dict[str, Any]:
    """Inputs of an urlencoded or multipart form (file parts saved under *tmpdir*, passed as paths)."""
    if content_type.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        if not message.is_multipart():
            raise BadRequest("malformed multipart body")
        inputs: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name:
                continue
            raw = part.get_payload(decode=True)
            payload = raw if isinstance(raw, bytes) else b""
            filename = part.get_filename()
            if name in inputs:
                raise BadRequest(f"input {name!r} is given twice")
            if filename:
                path = pathlib.Path(tempfile.mkdtemp(dir=tmpdir)) / pathlib.Path(filename).name
                path.write_bytes(payload)
                inputs[str(name)] = path
            else:
                inputs[str(name)] = payload.decode(part.get_content_charset() or "utf-8")
        return inputs
    try:
        pairs = urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise BadRequest("form body is not UTF-8") from None
    return {k: v[0] for k, v in pairs.items()}


class Handler(BaseHTTPRequestHandler):
    server_version = "premd-runtime/" + RUNTIME_VERSION
    protocol_version = "HTTP/1.1"
    runtime: Runtime

    def log_message(self, format: str, *args: Any) -> None:
        _REAL_STDERR.write(f"premd runtime: {self.address_string()} {format % args}\n")

    # --- plumbing ---
    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json", headers)

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._chunked_body()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _chunked_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise BadRequest("malformed chunked body") from None
            if size == 0:
                while self.rfile.readline(1024).strip():
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise BadRequest(f"body larger than {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _path(self) -> str:
        return urllib.parse.urlsplit(self.path).path

    # --- routes ---
    def do_GET(self) -> None:
        path, rt = self._path(), self.runtime
        if path == "/ping":
            if rt.state == READY:
                self._send(200, b"PONG", "text/plain; charset=utf-8")
            else:
                self._send(503, rt.state.encode(), "text/plain; charset=utf-8")
        elif path == "/health-check":
            self._json(200, rt.health())
        elif path in ("/v1", "/v1/"):
            status = 200 if rt.state == READY else 503
            self._json(status, {"status": rt.state, "model": rt.spec})
        elif path == "/":
            self._json(
                200,
                {
                    "premd_runtime": RUNTIME_VERSION,
                    "healthcheck_url": "/health-check",
                    "predictions_url": "/predictions",
                    "infer_url": "/infer",
                    "ping_url": "/ping",
                },
            )
        else:
            self._json(404, {"detail": f"no route {path}"})

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = self._path()
        try:
            if path == "/infer":
                self._infer()
            elif path == "/predictions":
                self._predictions()
            else:
                self._body()
                self._json(404, {"detail": f"no route {path}"})
        except BadRequest as exc:
            self.close_connection = True  # the rest of the body may still be unread
            self._json(400, {"detail": str(exc)})
        except Exception:
            # A bug here must still answer: a dropped connection tells the caller nothing.
            detail = traceback.format_exc()
            print(detail, file=_REAL_STDERR)
            self.close_connection = True
            self._json(500, {"detail": detail})

    def _not_ready(self) -> bool:
        rt = self.runtime
        if rt.state == READY:
            return False
        detail = "setup failed" if rt.state == SETUP_FAILED else "setup is still running"
        self._json(503, {"status": rt.state, "detail": detail, "logs": rt.setup_logs})
        return True

    def _infer(self) -> None:
        body = self._body()
        if self._not_ready():
            return
        content_type = self.headers.get("Content-Type") or "application/x-www-form-urlencoded"
        with tempfile.TemporaryDirectory(prefix="premd-infer-") as tmpdir:
            if content_type.startswith("application/json"):
                inputs = _json_object(body)
            else:
                inputs = _form_inputs(content_type, body, tmpdir)
            ok, output, _logs, seconds = self.runtime.predict(inputs)
            timing = {
                "X-Setup-Time": f"{self.runtime.setup_seconds or 0.0:.6f}",
                "X-Run-Time": f"{seconds:.6f}",
            }
            if not ok:
                self._send(500, str(output).encode(), "text/plain; charset=utf-8", timing)
            elif isinstance(output, str):
                self._send(200, output.encode(), "text/plain; charset=utf-8", timing)
            elif isinstance(output, pathlib.Path):
                mime = mimetypes.guess_type(output.name)[0] or "application/octet-stream"
                self._send(200, output.read_bytes(), mime, timing)
            elif isinstance(output, (bytes, bytearray)):
                self._send(200, bytes(output), "application/octet-stream", timing)
            else:
                try:
                    encoded = json.dumps(_jsonable(output)).encode()
                except (TypeError, ValueError) as exc:
                    message = f"run() returned a {type(output).__name__}, which cannot be sent: {exc}"
                    print(message, file=sys.stderr)
                    self._send(500, message.encode(), "text/plain; charset=utf-8", timing)
                    return
                self._send(200, encoded, "application/json", timing)

    def _predictions(self) -> None:
        body = self._body()
        if self._not_ready():
            return
        request = _json_object(body) if body.strip() else {}
        inputs = request.get("input") or {}
        if not isinstance(inputs, dict):
            self._json(422, {"detail": "input must be an object"})
            return
        started_at = time.time()
        ok, output, logs, seconds = self.runtime.predict(inputs)
        doc: dict[str, Any] = {
            "input": inputs,
            "id": request.get("id"),
            "created_at": request.get("created_at"),
            "started_at": _iso(started_at),
            "completed_at": _iso(time.time()),
            "logs": logs,
            "metrics": {"predict_time": seconds},
        }
        if ok:
            try:
                doc.update(status="succeeded", output=_jsonable(output), error=None)
                self._json(200, doc)
            except (TypeError, ValueError) as exc:
                error = f"run() returned a {type(output).__name__}, which cannot be sent: {exc}"
                print(error, file=sys.stderr)
                doc.update(status="failed", output=None, error=error)
                self._json(500, doc)
            return
        doc.update(status="failed", output=None, error=str(output))
        self._json(200, doc)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    return doc


def serve(argv: list[str] | None = None) -> None:
    spec = os.environ.get("PREMD_MODEL", "")
    code_dir = os.path.abspath(os.environ.get("PREMD_CODE_DIR", os.getcwd()))
    port = int(os.environ.get("PORT", "5000"))
    bind = os.environ.get("PREMD_BIND", "0.0.0.0")
    runtime = Runtime(spec, code_dir)
    handler = type("BoundHandler", (Handler,), {"runtime": runtime})
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True

    def stop(signum: int, frame: Any) -> None:
        # PID 1 in a container: without a handler SIGTERM is ignored and every stop waits for the kill.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    threading.Thread(target=runtime.load_and_setup, name="setup", daemon=True).start()
    print(f"premd runtime {RUNTIME_VERSION}: serving {spec} on {bind}:{port}", file=_REAL_STDERR, flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    serve(sys.argv[1:])
