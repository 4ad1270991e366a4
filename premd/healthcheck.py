"""``python -m premd.healthcheck <component>``: a container's health check (exit 0 healthy, 1 not).

The gateway is healthy when its ``/readyz`` answers 200 (the bus is connected and every component answers).
Another component is healthy when it answers its micro service's ``$SRV.PING.<component>`` on the bus; the
check connects as the read-only ``reader`` bus user (HEALTH_CREDENTIALS), since a component's own user may
not send pings. Settings come from the container's environment, as the component's own.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import urllib.error
import urllib.request

from common import bus, nats_auth, subjects
from common.entry import load_settings
from common.settings import Settings

HEALTH_CREDENTIALS = "/run/premd/health/reader.json"
TIMEOUT_S = 5.0


def gateway_ready(settings: Settings, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when /readyz answers 200, else why not."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/readyz"
    request = urllib.request.Request(url)
    if settings.api_token:
        request.add_header("Authorization", f"Bearer {settings.api_token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code} {exc.read(500).decode(errors='replace')}"
    except OSError as exc:
        return f"{url}: {exc}"


async def component_answers(
    settings: Settings, component: str, credentials: str, timeout_s: float = TIMEOUT_S
) -> str | None:
    """None when ``component`` answers a ping on the bus, else why not."""
    url = settings.nats_url or f"nats://127.0.0.1:{settings.nats_port}"
    try:
        creds = nats_auth.read_credentials(credentials)
        async with asyncio.timeout(timeout_s):
            nc = await bus.connect(url, "premd-healthcheck", creds)
    except Exception as exc:  # boundary: any failure is "unhealthy", said in one line
        return f"bus {url}: {exc}"
    try:
        await nc.request(f"{subjects.SRV_PING}.{component}", b"", timeout=timeout_s)
        return None
    except Exception as exc:  # boundary: as above
        return f"{component} did not answer $SRV.PING: {type(exc).__name__} {exc}"
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m premd.healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("component", choices=subjects.COMPONENTS)
    parser.add_argument("--credentials", default=HEALTH_CREDENTIALS, help="bus credentials file for the ping")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.component == subjects.GATEWAY:
        problem = gateway_ready(settings)
    else:
        problem = asyncio.run(component_answers(settings, args.component, args.credentials))
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
