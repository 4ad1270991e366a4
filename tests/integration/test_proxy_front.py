"""The byte-stream proxy front (gateway.forwarding) on a raw client connection: what an HTTP client library
would hide. Pipelined requests, a chunked upload passed through, and a connection that moves from the
proxy to premd's API (handed over to aiohttp) and keeps working."""

from __future__ import annotations

import asyncio
import json

from gateway.idle import IDLE
from tests.integration.edge_support import Client
from tests.testbed.util import wait_until

DEADLINE_S = 10.0


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-cased names), body (Content-Length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return status, headers, await reader.readexactly(int(headers.get("content-length", "0")))


def _post(path: str, body: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def test_pipelined_requests_are_answered_in_order(edge: tuple[Client, str]) -> None:
    client, sid = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(_post(f"/proxy/{sid}/echo/one", b"first") + _post(f"/proxy/{sid}/echo/two?x=1", b"second"))
        answers = [await _read_answer(reader) for _ in range(2)]
    finally:
        writer.close()
    bodies = [json.loads(body) for _, _, body in answers]
    assert [status for status, _, _ in answers] == [200, 200]
    assert [(b["path"], b["body_text"]) for b in bodies] == [("/echo/one", "first"), ("/echo/two", "second")]
    assert bodies[1]["query"] == {"x": "1"}
    echoed = bodies[0]["headers"]
    assert echoed["X-Forwarded-Prefix"] == f"/proxy/{sid}"
    assert echoed["X-Forwarded-For"] == "127.0.0.1"
    assert answers[0][1]["vary"] == "Origin"


async def test_chunked_upload_then_the_api_on_the_same_connection(edge: tuple[Client, str]) -> None:
    client, sid = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(
            f"PUT /proxy/{sid}/echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        # Chunks split at awkward places: inside a size line, inside data, inside the final CRLF.
        for piece in (b"5\r\nhel", b"lo\r\n1", b"0;ext=1\r\n0123456789abcdef\r\n0\r", b"\n\r\n"):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)  # separate TCP segments (not a readiness wait)
        status, _, body = await _read_answer(reader)
        assert status == 200
        echo = json.loads(body)
        assert (echo["method"], echo["body_text"]) == ("PUT", "hello0123456789abcdef")
        # premd's own API on the same connection: handed over to aiohttp, still one keep-alive connection.
        writer.write(b"GET /v1/services/ HTTP/1.1\r\nHost: localhost\r\n\r\n")
        status, headers, body = await _read_answer(reader)
        assert status == 200 and headers["content-type"].startswith("application/json")
        assert sid in {service["id"] for service in json.loads(body)}
        writer.write(_post(f"/proxy/{sid}/echo", b"after"))
        status, _, body = await _read_answer(reader)
        assert status == 200 and json.loads(body)["body_text"] == "after"
    finally:
        writer.close()


async def test_malformed_proxy_request_gets_aiohttps_400(edge: tuple[Client, str]) -> None:
    client, sid = edge
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(f"GET /proxy/{sid}/v1/ HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n".encode())
        status, _, _ = await _read_answer(reader)
    finally:
        writer.close()
    assert status == 400


async def test_a_proxied_request_is_activity_until_its_last_byte(edge: tuple[Client, str]) -> None:
    """The idle stop must not stop a service while a request through /proxy/ is still streaming from it."""
    client, sid = edge
    assert client.app is not None
    idle = client.app[IDLE]
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    body = json.dumps({**chat, "ref_tokens": 4, "ref_token_delay_s": 0.3}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(_post(f"/proxy/{sid}/v1/chat/completions", body))

        async def in_flight() -> bool:
            return idle.in_flight(sid) == 1

        await wait_until(in_flight, deadline_s=DEADLINE_S, interval=0.02, what="the request counted as activity")
        status, _, answer = await _read_answer(reader)
    finally:
        writer.close()
    assert status == 200 and b"[DONE]" in answer
    assert idle.in_flight(sid) == 0


async def test_openai_request_whose_body_comes_later_reaches_its_model(edge: tuple[Client, str]) -> None:
    """The front waits for the body to read ``model`` (head and body in separate segments)."""
    client, sid = edge
    body = json.dumps({"model": sid, "input": "hello"}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    try:
        writer.write(f"POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.05)  # a separate TCP segment (not a readiness wait)
        writer.write(body[:5])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[5:])
        status, _, answer = await _read_answer(reader)
        assert status == 200 and json.loads(answer)["object"] == "list"
        # An unknown model on the same connection: aiohttp's route answers in OpenAI's shape.
        unknown = json.dumps({"model": "no-such-model", "input": "x"}).encode()
        writer.write(_post("/v1/embeddings", unknown))
        status, _, answer = await _read_answer(reader)
        assert status == 404 and json.loads(answer)["error"]["code"] == "model_not_found"
    finally:
        writer.close()
