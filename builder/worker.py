"""The build worker: takes jobs from the PREMD_BUILD_JOBS work queue through the builders' durable consumer.

A job is acknowledged only once its attempt ended (ready or failed, recorded in KV). While it runs, the worker
tells the server it is still at it (``in_progress``) every third of the ack wait; a builder that dies stops
doing so, and after the ack wait the server hands the job to the next builder that asks (or to this one once it
is restarted), which runs the attempt again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from builder.pipeline import Pipeline
from common import codec, subjects
from common.messages import BuildJob

logger = logging.getLogger(__name__)

FETCH_WAIT_S = 5.0


class Worker:
    def __init__(self, js: JetStreamContext, pipeline: Pipeline, ack_wait_s: float) -> None:
        self._js = js
        self._pipeline = pipeline
        self._ack_wait_s = ack_wait_s
        self.current: str | None = None

    async def run(self) -> None:
        sub = await self._js.pull_subscribe(
            subjects.BUILD_JOBS_ALL,
            durable=subjects.BUILD_JOBS_CONSUMER,
            stream=subjects.BUILD_JOBS_STREAM,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=self._ack_wait_s,
                deliver_policy=DeliverPolicy.ALL,
                max_deliver=-1,
                max_ack_pending=-1,
            ),
        )
        await self._align_ack_wait()
        while True:
            try:
                msgs = await sub.fetch(1, timeout=FETCH_WAIT_S)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            except nats.errors.Error as exc:
                logger.warning("build jobs: %s", exc)
                await asyncio.sleep(1.0)  # NATS is away: retry pace, not a readiness wait
                continue
            for msg in msgs:
                await self._handle(msg)

    async def _align_ack_wait(self) -> None:
        """A consumer created earlier with another ack wait gets this builder's (the setting may have changed)."""
        info = await self._js.consumer_info(subjects.BUILD_JOBS_STREAM, subjects.BUILD_JOBS_CONSUMER)
        if info.config.ack_wait is not None and abs(info.config.ack_wait - self._ack_wait_s) > 0.001:
            info.config.ack_wait = self._ack_wait_s
            with contextlib.suppress(nats.js.errors.Error):  # the server updates a durable's editable fields
                await self._js.add_consumer(subjects.BUILD_JOBS_STREAM, info.config)

    async def _handle(self, msg: Msg) -> None:
        try:
            job = codec.decode(msg.data, BuildJob)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.warning("undecodable build job dropped: %r", msg.data[:200])
            await msg.term()
            return
        redelivered = msg.metadata.num_delivered > 1
        self.current = job.package_id
        beat = asyncio.create_task(self._keep_alive(msg), name=f"build job {job.package_id} in progress")
        try:
            await self._pipeline.run(job.package_id, job.attempt, redelivered=redelivered)
        except asyncio.CancelledError:  # stopping: hand the job back now rather than after the ack wait
            with contextlib.suppress(nats.errors.Error):
                await msg.nak()
            raise
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
            self.current = None
        await msg.ack_sync()

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self._ack_wait_s / 3)  # the heartbeat period
            with contextlib.suppress(nats.errors.Error):
                await msg.in_progress()
