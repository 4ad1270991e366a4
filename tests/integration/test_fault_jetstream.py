"""JetStream state at start-up (issue 9 defect 9): an undecodable KV value is skipped and reported, not fatal;
streams and buckets whose configuration changed are updated on start; the event stream has a byte limit."""

from __future__ import annotations

import logging

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig, StorageType, StreamConfig

from common import bus, subjects
from common.errors import Code, UnavailableError
from common.jetstream import EVENTS_MAX_BYTES, ensure_resources, kv_bucket, kv_get
from common.messages import Empty, RegistryList
from common.settings import Settings
from registry_sync.component import RegistrySync
from registry_sync.state import REGISTRIES_KEY, RegistryConfig
from tests.support.bus_users import connect_as
from tests.testbed.registries import REGISTRIES_DIR
from tests.testbed.util import StopWaiting, wait_until


async def test_an_undecodable_value_reads_as_absent_and_is_reported(nc: NATS, caplog: pytest.LogCaptureFixture) -> None:
    js = nc.jetstream()
    await ensure_resources(js)
    kv = await kv_bucket(js, subjects.KV_REGISTRY_CONFIG)
    revision = await kv.put(REGISTRIES_KEY, b"\xff not msgpack nor json")
    with caplog.at_level(logging.ERROR, logger="common.jetstream"):
        assert await kv_get(kv, REGISTRIES_KEY, RegistryConfig) == (None, revision)
    assert any(f"{REGISTRIES_KEY}: undecodable RegistryConfig skipped" in r.getMessage() for r in caplog.records)


async def test_registry_sync_starts_over_an_undecodable_config_and_replaces_it(
    settings: Settings, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    await ensure_resources(js)
    kv = await kv_bucket(js, subjects.KV_REGISTRY_CONFIG)
    await kv.put(REGISTRIES_KEY, b"{broken")
    url = (REGISTRIES_DIR / "prem-daemon-mock-manifests.json").as_uri()
    own = await connect_as(settings, subjects.REGISTRY_SYNC)
    sync = RegistrySync(msgspec.structs.replace(settings, registry_urls=(url,)), own)
    with caplog.at_level(logging.ERROR, logger="common.jetstream"):
        await sync.start()
    try:
        listed = await _answered(nc)
        assert [r.url for r in listed.registries] == [url]
        config, _ = await kv_get(kv, REGISTRIES_KEY, RegistryConfig)
        assert config is not None and config.urls == [url], "the bad value is replaced by the next write"
    finally:
        await sync.stop()
        await own.close()
    assert any("undecodable RegistryConfig skipped" in r.getMessage() for r in caplog.records)


async def _answered(nc: NATS) -> RegistryList:
    """The registry list, once registry_sync answers on the test's connection (bounded).

    In full suite runs (never alone) the first request right after ``start()`` was seen to get "no responders"
    although the start flushes its subscriptions first; what the test checks is what it answers.
    """
    answers: list[RegistryList] = []

    async def answered() -> bool:
        try:
            answers.append(await bus.request(nc, subjects.REGISTRY_LIST, Empty(), RegistryList, 10))
        except UnavailableError as exc:
            if exc.code != Code.BUS_UNAVAILABLE:
                raise StopWaiting(exc.message) from exc
            return False
        return True

    await wait_until(answered, deadline_s=10, interval=0.05, what="registry_sync answering")
    return answers[-1]


async def test_streams_and_buckets_from_an_older_configuration_are_updated_on_start(
    nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    js = nc.jetstream()
    # As an older premd left them: no byte limit and a short age on the events, one version of desired state.
    await js.add_stream(
        StreamConfig(name=subjects.EVENTS_STREAM, subjects=[subjects.EVENTS_ALL], storage=StorageType.FILE, max_age=60)
    )
    await js.create_key_value(config=KeyValueConfig(bucket=subjects.KV_DESIRED, history=1, storage=StorageType.FILE))
    await js.publish(subjects.service_event("svc", "op", "accepted"), b"{}")
    with caplog.at_level(logging.INFO, logger="common.jetstream"):
        await ensure_resources(js)
    events = (await js.stream_info(subjects.EVENTS_STREAM)).config
    assert events.max_bytes == EVENTS_MAX_BYTES and events.max_age == 7 * 24 * 3600
    assert (await js.stream_info(subjects.EVENTS_STREAM)).state.messages == 1, "updated in place, nothing lost"
    assert (await js.stream_info(f"KV_{subjects.KV_DESIRED}")).config.max_msgs_per_subject == 5
    updated = [r.getMessage() for r in caplog.records if "configuration updated" in r.getMessage()]
    assert updated == [
        f"stream {subjects.EVENTS_STREAM}: configuration updated (max_age, max_bytes, max_msgs)",
        f"stream KV_{subjects.KV_DESIRED}: configuration updated (max_msgs_per_subject)",
    ]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="common.jetstream"):
        await ensure_resources(js)  # already current: nothing to update
    assert not [r for r in caplog.records if "configuration updated" in r.getMessage()]
