"""Settings from the environment: defaults, parsing, and start-up errors that name the variable."""

from __future__ import annotations

import pytest

from common.errors import SettingsError
from common.settings import OFFICIAL_REGISTRY_URL, Settings


def test_defaults_are_safe() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.nats_url, s.nats_port, s.api_token) == ("127.0.0.1", 54321, None, 4222, None)
    assert s.registry_urls == (OFFICIAL_REGISTRY_URL,)
    assert not s.is_exposed()


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "PREMD_PORT": "8000",
            "PREMD_NATS_URL": "nats://127.0.0.1:4333",
            "PREM_REGISTRY_URL": " http://a/x.json\n\thttp://b/y.json  ",
            "PREMD_CORS_ORIGINS": "http://localhost:1420, tauri://localhost",
            "PREMD_AUTOSTART": "true",
            "PREMD_READINESS_TIMEOUT_S": "2.5",
        }
    )
    assert s.port == 8000 and s.nats_url == "nats://127.0.0.1:4333"
    assert s.registry_urls == ("http://a/x.json", "http://b/y.json")
    assert s.cors_origins == ("http://localhost:1420", "tauri://localhost")
    assert s.autostart is True and s.readiness_timeout_s == 2.5


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({"PREMD_PORT": "abc"}, "PREMD_PORT", "'abc'"),
        ({"PREMD_PORT": "70000"}, "PREMD_PORT", "<= 65535"),
        ({"PREMD_NATS_PORT": "-1"}, "PREMD_NATS_PORT", ">= 1"),
        ({"PREMD_READINESS_TIMEOUT_S": "soon"}, "PREMD_READINESS_TIMEOUT_S", "'soon'"),
        ({"PREMD_AUTOSTART": "maybe"}, "PREMD_AUTOSTART", "'maybe'"),
        ({"PREMD_PROT": "1"}, "PREMD_PROT", "unknown setting"),
        ({"PREMD_RESTART_POLICY": "sometimes"}, "PREMD_RESTART_POLICY", "unknown policy"),
        ({"PREMD_HOST": "0.0.0.0"}, "PREMD_HOST", "PREMD_API_TOKEN"),
        ({"PREMD_CORS_ORIGINS": "http://localhost:*,*"}, "PREMD_CORS_ORIGINS", "PREMD_API_TOKEN"),
        ({"PREMD_LOG_LEVEL": "verbose"}, "PREMD_LOG_LEVEL", "unknown level 'verbose'"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_exposed_host_needs_a_token() -> None:
    s = Settings.from_env({"PREMD_HOST": "0.0.0.0", "PREMD_API_TOKEN": "secret"})
    assert s.is_exposed() and s.api_token == "secret"
    assert not Settings.from_env({"PREMD_HOST": "::1"}).is_exposed()


def test_numbers_and_flags_tolerate_surrounding_whitespace() -> None:
    """Values from env files often keep a trailing space or newline; strings (tokens, URLs) are kept as given."""
    s = Settings.from_env({"PREMD_PORT": " 8080\n", "PREMD_AUTOSTART": "true ", "PREMD_LOG_LEVEL": "debug"})
    assert (s.port, s.autostart, s.log_level) == (8080, True, "debug")
