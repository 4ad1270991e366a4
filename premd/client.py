"""The command line's HTTP client for a running premd: where it is, its token, and errors as one clear line.

Where: ``--url`` / ``PREMD_URL``, else ``http://127.0.0.1:<PREMD_PORT>`` (the daemon's own setting). Token:
``--token`` / ``PREMD_TOKEN``, else the daemon's ``PREMD_API_TOKEN``, else ``<PREMD_DATA_DIR>/api_token`` when
that file exists (a token written next to premd's data).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from common.errors import SettingsError
from common.settings import Settings

TOKEN_FILE = "api_token"
TIMEOUT_S = 30.0
"""A request's deadline; actions (run, restart) get the daemon's readiness time on top."""
STREAM_READ_S = 60.0
"""A stream that sends nothing for this long is dead (premd pings every 15 s)."""


class CliError(Exception):
    """Ends the command with one line on stderr and exit code 1."""

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    token: str | None


def _daemon_settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError:
        return Settings()  # a bad daemon setting is `premd serve`'s problem; the defaults still locate it


def resolve(url: str | None, token: str | None) -> Target:
    settings: Settings | None = None
    if not url:
        url = os.environ.get("PREMD_URL")
    if not url:
        settings = _daemon_settings()
        url = f"http://127.0.0.1:{settings.port}"
    if not token:
        token = os.environ.get("PREMD_TOKEN")
    if not token:
        settings = settings or _daemon_settings()
        token = settings.api_token
        path = Path(settings.data_dir) / TOKEN_FILE
        if not token and path.is_file():
            token = path.read_text().strip() or None
    return Target(url.rstrip("/"), token)


def _message(resp: httpx.Response) -> tuple[str, str | None]:
    """premd's ``{"detail": {"message", "code"}}``, FastAPI's 422 list, or the status line."""
    try:
        body = resp.json()
    except ValueError:
        return f"HTTP {resp.status_code} {resp.reason_phrase}", None
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        return str(detail.get("message", "")), detail.get("code")
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        issue = detail[0]
        where = ".".join(str(p) for p in issue.get("loc", []))
        return f"{where}: {issue.get('msg', 'invalid')}", "request.invalid"
    if isinstance(detail, str):
        return detail, None
    return f"HTTP {resp.status_code} {resp.reason_phrase}", None


class Api:
    def __init__(self, target: Target) -> None:
        self.target = target
        headers = {"Accept": "application/json"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        self._http = httpx.Client(base_url=target.url, headers=headers, timeout=TIMEOUT_S, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        url = self.target.url
        try:
            yield
        except httpx.ConnectError:
            raise CliError(
                f"cannot reach premd at {url}: is `premd serve` running? (set --url or PREMD_URL for another one)",
                "cli.unreachable",
            ) from None
        except httpx.TimeoutException:
            raise CliError(f"premd at {url} did not answer {what} in time", "cli.timeout") from None
        except httpx.HTTPError as exc:
            raise CliError(f"{what} at {url} failed: {exc}", "cli.http") from None

    def _check(self, resp: httpx.Response, ok: tuple[int, ...]) -> None:
        if resp.status_code in ok:
            return
        message, code = _message(resp)
        if resp.status_code == 401:
            message += " (give the token with --token or PREMD_TOKEN)"
        raise CliError(message, code, resp.status_code)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        files: Any = None,
        timeout: float | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> Any:
        with self._calling(f"{method} {path}"):
            resp = self._http.request(method, path, params=params, json=json, files=files, timeout=timeout or TIMEOUT_S)
        self._check(resp, ok)
        return resp.json() if resp.content else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.call("GET", path, **kwargs)

    def download(self, path: str, dest: Path) -> int:
        """Stream a body into ``dest``; its size."""
        size = 0
        with self._calling(f"GET {path}"), self._http.stream("GET", path, timeout=STREAM_READ_S) as resp:
            if resp.status_code != 200:
                resp.read()
                self._check(resp, (200,))
            with dest.open("wb") as out:
                for chunk in resp.iter_bytes():
                    out.write(chunk)
                    size += len(chunk)
        return size

    def sse(self, path: str, params: Mapping[str, str] | None = None) -> Iterator[ServerSentEvent]:
        """The stream's events, until the server ends it."""
        timeout = httpx.Timeout(TIMEOUT_S, read=STREAM_READ_S)
        headers = {"Accept": "text/event-stream"}
        with self._calling(f"GET {path}"):
            with connect_sse(self._http, "GET", path, params=params, timeout=timeout, headers=headers) as source:
                if source.response.status_code != 200:
                    source.response.read()
                    self._check(source.response, (200,))
                yield from source.iter_sse()
