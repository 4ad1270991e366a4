"""Pure rules of the gateway's edge: origin matching, state-changing routes, hosts, tokens, multipart, metrics."""

from __future__ import annotations

import pytest

from common.settings import DEFAULT_CORS_ORIGINS
from gateway.cors import OriginPolicy
from gateway.routes.metrics import Histogram, Metrics
from gateway.routes.openai import form_field
from gateway.security import bearer_matches, foreign_site, is_loopback_host, is_state_changing

DEFAULTS = OriginPolicy(DEFAULT_CORS_ORIGINS)


@pytest.mark.parametrize(
    "origin",
    [
        "tauri://localhost",
        "http://tauri.localhost",
        "https://tauri.localhost",
        "http://localhost",
        "http://localhost:3000",
        "http://LOCALHOST:5173",
        "http://127.0.0.1:8080",
        "http://127.0.0.1",
    ],
)
def test_default_origins_cover_prem_app(origin: str) -> None:
    assert DEFAULTS.allows(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "null",
        "",
        "http://localhost.evil.example",
        "http://localhost.evil.example:3000",
        "https://localhost:3000",  # the wildcard is for the port, not the scheme
        "http://127.0.0.1.nip.io:3000",
        "http://evil.example/http://localhost",
        "http://localhost:*",
        "file://",
    ],
)
def test_foreign_origins_are_not_allowed(origin: str) -> None:
    assert not DEFAULTS.allows(origin)


def test_exact_and_wildcard_patterns() -> None:
    policy = OriginPolicy(["https://app.example:8443", "http://[::1]:*"])
    assert policy.allows("https://app.example:8443")
    assert not policy.allows("https://app.example")
    assert not policy.allows("https://app.example:8444")
    assert policy.allows("http://[::1]:3000")
    assert not policy.allows("http://[::2]:3000")
    assert OriginPolicy(["*"]).allows("https://anything.example") and OriginPolicy(["*"]).any
    with pytest.raises(ValueError, match="not an origin"):
        OriginPolicy(["localhost:3000"])


def test_origin_cache_is_bounded() -> None:
    policy = OriginPolicy(["http://localhost:*"])
    for i in range(5000):
        assert not policy.allows(f"https://x{i}.example")
    assert len(policy._cache) <= 1024


@pytest.mark.parametrize(
    ("method", "path", "upgrade", "expected"),
    [
        ("GET", "/v1/services/", "", False),
        ("HEAD", "/v1/", "", False),
        ("OPTIONS", "/v1/stop-service/x", "", False),
        ("GET", "/v1/stop-service/x", "", True),
        ("GET", "/v1/restart-service/x", "", True),
        ("GET", "/v1/remove-service/x", "", True),
        ("GET", "/v1/remove-volume/x", "", True),
        ("GET", "/v1/stop-all-services/", "", True),
        ("GET", "/v1/system-prune/", "", True),
        ("GET", "/v1/download-service/x", "", True),
        ("GET", "/v1/download-service-stream-sse/x", "", True),
        ("GET", "/proxy/x/v1/models", "", False),
        ("GET", "/proxy/x/ws", "websocket", True),
        ("POST", "/v1/registries/", "", True),
        ("DELETE", "/v1/registries/", "", True),
        ("POST", "/proxy/x/v1/chat/completions", "", True),
        ("PUT", "/anything", "", True),
    ],
)
def test_state_changing_requests(method: str, path: str, upgrade: str, expected: bool) -> None:
    assert is_state_changing(method, path, upgrade) is expected


def test_foreign_site_rules() -> None:
    assert foreign_site(None, None, DEFAULTS) is None  # curl, SDKs
    assert foreign_site(None, "same-origin", DEFAULTS) is None
    assert foreign_site(None, "same-site", DEFAULTS) is None
    assert foreign_site(None, "none", DEFAULTS) is None  # typed in the address bar
    assert foreign_site(None, "cross-site", DEFAULTS) == "security.cross_site"
    assert foreign_site("https://evil.example", None, DEFAULTS) == "security.foreign_origin"
    assert foreign_site("https://evil.example", "same-site", DEFAULTS) == "security.foreign_origin"
    # An allowed origin wins over Sec-Fetch-Site: the desktop app (tauri://localhost) is cross-site to premd.
    assert foreign_site("tauri://localhost", "cross-site", DEFAULTS) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:54321", True),
        ("LOCALHOST.", True),
        ("app.localhost:3000", True),
        ("127.0.0.1:54321", True),
        ("127.8.9.10", True),
        ("[::1]:54321", True),
        ("::1", True),
        ("evil.example", False),
        ("evil.example:54321", False),
        ("localhost.evil.example", False),
        ("192.168.1.5:54321", False),
        ("[::2]:54321", False),
        ("0.0.0.0", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_bearer_tokens() -> None:
    token = b"t0ken"
    assert bearer_matches("Bearer t0ken", token)
    assert bearer_matches("bearer t0ken", token)
    assert not bearer_matches("Bearer t0ken2", token)
    assert not bearer_matches("Bearer ", token)
    assert not bearer_matches("Basic t0ken", token)
    assert not bearer_matches("t0ken", token)
    assert not bearer_matches(None, token)


def test_form_field_reads_only_the_named_text_field() -> None:
    body = (
        b"--b0\r\n"
        b'Content-Disposition: form-data; name="file"; filename="model.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n"
        b'name="model"\r\n--b0 not a delimiter\r\n'
        b"\r\n--b0\r\n"
        b'Content-Disposition: form-data; name="model"\r\n\r\n'
        b"whisper-small\r\n"
        b"--b0--\r\n"
    )
    assert form_field(body, "multipart/form-data; boundary=b0", "model") == "whisper-small"
    assert form_field(body, 'multipart/form-data; boundary="b0"', "model") == "whisper-small"
    assert form_field(body, "multipart/form-data; boundary=b0", "prompt") is None
    assert form_field(body, "multipart/form-data", "model") is None
    assert form_field(b"garbage", "multipart/form-data; boundary=b0", "model") is None


def test_histogram_and_counter_exposition() -> None:
    hist = Histogram("h_seconds", "help", ("k",), buckets=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        hist.observe(("a",), value)
    out: list[str] = []
    hist.render(out)
    assert out[2:] == [
        'h_seconds_bucket{k="a",le="0.1"} 2',
        'h_seconds_bucket{k="a",le="1"} 3',
        'h_seconds_bucket{k="a",le="+Inf"} 4',
        'h_seconds_sum{k="a"} 3.65',
        'h_seconds_count{k="a"} 4',
    ]
    metrics = Metrics()
    metrics.observe_http('/x/{a}"\n', "BREW", 418, 0.001)
    text = metrics.render([])
    assert 'premd_http_requests_total{route="/x/{a}\\"\\n",method="OTHER",status="418"} 1' in text
    assert 'premd_services{phase="ready"} 0' in text
