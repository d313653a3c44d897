"""Composition root of the heartbeat process."""

from __future__ import annotations

import logging

import aiohttp
from fastapi import APIRouter
from faststream.nats import ConsumerConfig, DeliverPolicy
from nats.aio.msg import Msg
from nats.js.api import AckPolicy as JsAckPolicy
from pydantic import ValidationError

from services.heartbeat import job_state
from services.heartbeat.api import build_router
from services.heartbeat.application import HeartbeatApplication
from services.heartbeat.channels import Sender, Template
from services.heartbeat.consumer import SlotDueConsumer
from services.heartbeat.deliveries import DeliveriesProjection
from services.heartbeat.group_commit import GroupCommitter
from services.heartbeat.translate import to_contract
from shared.broker import batch_subscriber
from shared.contracts import SlotDue, parse_event, stream_name
from shared.runtime import ServiceRuntime
from shared.settings import HeartbeatSettings

log = logging.getLogger(__name__)

CONSUMER = "heartbeat-slot-due"


def build(settings: HeartbeatSettings) -> tuple[ServiceRuntime, list[APIRouter]]:
    template = Template(settings.heartbeat_template)
    runtime = ServiceRuntime(
        name="heartbeat",
        settings=settings,
        application_factory=lambda env: HeartbeatApplication(env=env),
        translate=to_contract,
    )
    state: dict[str, SlotDueConsumer] = {}

    async def start() -> None:
        async with runtime.pool.acquire() as conn:
            await conn.execute(job_state.DDL)
        projection = DeliveriesProjection(
            store=runtime.store, pool=runtime.pool, schema=runtime.schema
        )
        runtime.followers.append(projection)
        # aiohttp, not httpx: at hundreds of deliveries in flight httpx's pool bookkeeping
        # cost more CPU than everything else a delivery does (measured in bench/).
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=settings.delivery_concurrency),
            # Keep the client's own headers minimal and never read proxy settings.
            trust_env=False,
            # Never keep cookies: one receiver's cookie must not go out with another
            # user's heartbeat to the same host (and the jar costs CPU per request).
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        runtime.on_stop(client.close)
        token = settings.telegram_bot_token
        sender = Sender(
            client,
            attempt_timeout=settings.delivery_timeout,
            deadline=settings.delivery_deadline,
            telegram_api_base=settings.telegram_api_base,
            telegram_bot_token=token.get_secret_value() if token else None,
        )

        def on_recorded() -> None:
            projection.wake()
            runtime.relay.wake()

        state["consumer"] = SlotDueConsumer(
            pool=runtime.pool,
            events_table=runtime.store.app.recorder.events_table_name,  # type: ignore[attr-defined]
            committer=GroupCommitter(runtime.store),
            broker=runtime.broker,
            sender=sender,
            template=template,
            max_deliver=settings.max_deliver,
            concurrency=settings.delivery_concurrency,
            record_spans=settings.otel_exporter_otlp_endpoint is not None,
            registry=runtime.registry,
            on_recorded=on_recorded,
        )

    runtime.on_start(start)

    # Every instance shares one durable consumer; JetStream spreads messages among them.
    # ack_wait must outlast a delivery with all its retries, or JetStream redelivers a
    # slot that is still being worked on. A fetched batch waits at most 100 ms to fill,
    # which bounds the latency it adds.
    @batch_subscriber(
        runtime.broker,
        SlotDue.subject(),
        stream=stream_name("scheduler"),
        durable=CONSUMER,
        batch_size=min(settings.delivery_concurrency, 256),
        max_wait=0.1,
        config=ConsumerConfig(
            ack_policy=JsAckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.delivery_deadline + 30,
            max_ack_pending=settings.delivery_concurrency * 4,
        ),
    )
    async def on_slot_due(batch: list[Msg]) -> None:
        await state["consumer"].accept(batch)

    async def drain(grace: float) -> None:
        if "consumer" in state:
            await state["consumer"].drain(grace)

    runtime.on_drain(drain)

    def follow_job_state(subject: str) -> None:
        @batch_subscriber(
            runtime.broker,
            subject,
            stream=stream_name("scheduler"),
            durable="heartbeat-" + subject.rsplit(".", 1)[-1].replace("_", "-"),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_wait=60),
        )
        async def on_job_events(batch: list[Msg]) -> None:
            events, parsed = [], []
            for msg in batch:
                try:
                    events.append(parse_event(msg.data))
                    parsed.append(msg)
                except ValidationError as exc:
                    log.error(
                        "unparseable scheduler event skipped",
                        extra={"fields": {"subject": msg.subject, "error": str(exc)}},
                    )
                    await msg.term()
            # A database error leaves the batch unacked: JetStream redelivers it.
            async with runtime.pool.acquire() as conn:
                await job_state.apply(conn, events)
            for msg in parsed:
                await msg.ack()

    for subject in job_state.SUBJECTS:
        follow_job_state(subject)

    return runtime, [build_router(lambda: runtime.pool)]


def main() -> None:
    from shared.runtime import serve

    runtime, routers = build(HeartbeatSettings())  # type: ignore[call-arg]
    serve(runtime, routers)
