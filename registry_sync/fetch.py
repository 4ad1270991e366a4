"""Fetching registry documents: http(s) with conditional requests, file:// from disk; a deadline and a size limit.

Nothing here blocks the event loop: HTTP goes through aiohttp, disk reads through a worker thread. A file://
registry must be a regular file: a FIFO or a device could block the worker thread forever, past the deadline.
"""

from __future__ import annotations

import asyncio
import os
import stat
from urllib.parse import unquote, urlsplit

import aiohttp
import msgspec

from registry_sync.file_policy import FilePolicy

SCHEMES = ("http", "https", "file")


class FetchError(Exception):
    """The registry could not be fetched; the message says why (shown in RegistryStatus.error)."""


class NotModified(msgspec.Struct, frozen=True):
    """The registry answered 304 (or the file is unchanged): the last good content is current."""


class Document(msgspec.Struct, frozen=True, kw_only=True):
    body: bytes
    etag: str | None = None
    last_modified: str | None = None


FetchResult = NotModified | Document


def scheme_of(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError:  # e.g. "http://[::1": malformed, but its scheme is still what the user meant
        scheme, colon, _ = url.partition(":")
        return scheme.lower() if colon else ""


def is_supported(url: str) -> bool:
    return scheme_of(url) in SCHEMES


class Fetcher:
    """Fetches registries; owns one aiohttp session (``close()`` it)."""

    def __init__(self, timeout_s: float, max_bytes: int, file_policy: FilePolicy | None = None) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.file_policy = file_policy or FilePolicy(None, ())
        """Which files may be read (none by default)."""
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, etag: str | None = None, last_modified: str | None = None) -> FetchResult:
        """The document at ``url``, or NotModified when the validators still match; raises FetchError."""
        scheme = scheme_of(url)
        try:
            async with asyncio.timeout(self.timeout_s):
                if scheme == "file":
                    return await asyncio.to_thread(self._read_file, url, etag)
                if scheme in ("http", "https"):
                    return await self._get(url, etag, last_modified)
        except TimeoutError:
            raise FetchError(f"no complete answer within {self.timeout_s:g} s") from None
        except ValueError as exc:
            # A malformed URL (urlsplit, yarl, a NUL byte in a path): this registry's problem, not the others'.
            raise FetchError(f"invalid URL: {exc}") from None
        raise FetchError(f"unsupported URL scheme {scheme!r} (use http, https or file)")

    async def _get(self, url: str, etag: str | None, last_modified: str | None) -> FetchResult:
        headers = {"Accept": "application/json"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(url, headers=headers) as resp:
                if resp.status == 304:
                    return NotModified()
                if resp.status != 200:
                    raise FetchError(f"HTTP {resp.status} {resp.reason or ''}".rstrip())
                if resp.content_length is not None and resp.content_length > self.max_bytes:
                    raise FetchError(self._too_large(resp.content_length))
                body = await self._read_limited(resp.content)
                return Document(
                    body=body, etag=resp.headers.get("ETag"), last_modified=resp.headers.get("Last-Modified")
                )
        except aiohttp.InvalidURL as exc:
            raise FetchError(f"invalid URL: {exc}") from None
        except aiohttp.ClientError as exc:
            raise FetchError(f"{type(exc).__name__}: {exc}") from None

    async def _read_limited(self, stream: aiohttp.StreamReader) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in stream.iter_chunked(1 << 20):
            size += len(chunk)
            if size > self.max_bytes:
                raise FetchError(self._too_large(size, at_least=True))
            chunks.append(chunk)
        return b"".join(chunks)

    def _read_file(self, url: str, etag: str | None) -> FetchResult:
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"file URLs must name a local path, not host {parts.netloc!r}")
        path = unquote(parts.path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; anything but a regular file is refused below.
            with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
                # Judged on the file actually opened: a symbolic link swapped in after a check cannot lead out.
                if refusal := self.file_policy.refusal(_opened_path(f.fileno(), path)):
                    raise FetchError(refusal)
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise FetchError(f"{path} is not a regular file")
                # Like nginx: modification time and size make the validator, so an unchanged file is not re-read.
                validator = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
                if etag == validator:
                    return NotModified()
                if st.st_size > self.max_bytes:
                    raise FetchError(self._too_large(st.st_size))
                body = f.read(self.max_bytes + 1)
        except OSError as exc:
            raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
        if len(body) > self.max_bytes:
            raise FetchError(self._too_large(len(body), at_least=True))
        return Document(body=body, etag=validator)

    def _too_large(self, size: int, at_least: bool = False) -> str:
        return f"document {'over' if at_least else 'of'} {size} bytes exceeds the limit of {self.max_bytes} bytes"


def _opened_path(fd: int, path: str) -> str:
    """The real path of an open file (Linux: /proc/self/fd), else ``path`` with its links resolved."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
