"""Reading a JetStream object chunk by chunk (nats-py's ``get`` gathers the whole object in memory)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import DigestMismatchError

CHUNK_WAIT_S = 30.0


async def object_info(js: JetStreamContext, bucket: str, name: str) -> ObjectInfo:
    """The object's metadata; nats.js.errors.NotFoundError (or a subclass) when absent or deleted."""
    store = await js.object_store(bucket)
    return await store.get_info(name)


async def iter_object(js: JetStreamContext, bucket: str, info: ObjectInfo) -> AsyncIterator[bytes]:
    """The object's chunks in order; the digest is checked at the end (DigestMismatchError)."""
    if not info.size:
        return
    sub = await js.subscribe(f"$O.{bucket}.C.{info.nuid}", ordered_consumer=True)
    digest = hashlib.sha256()
    try:
        while True:
            msg = await sub.next_msg(timeout=CHUNK_WAIT_S)
            digest.update(msg.data)
            yield msg.data
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    expected = (info.digest or "").split("=", 1)[-1]
    if base64.urlsafe_b64decode(expected + "=" * (-len(expected) % 4)) != digest.digest():
        raise DigestMismatchError
