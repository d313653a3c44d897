"""Composition root of the monitor process.

The monitor follows every service's stream with its own durable consumer and keeps one
row per event id (so redeliveries count once) and Prometheus counters by event type.
"""

from __future__ import annotations

import logging
from typing import Any

from eventsourcing.application import Application
from fastapi import APIRouter
from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsMessage, PullSub
from prometheus_client import Counter
from pydantic import ValidationError

from shared.broker import message_handler
from shared.contracts import SERVICES, parse_event, stream_name
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings

log = logging.getLogger(__name__)

DDL = """
CREATE TABLE IF NOT EXISTS events_seen (
    event_id uuid PRIMARY KEY,
    type text NOT NULL,
    service text NOT NULL,
    occurred_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_seen_type ON events_seen (type, occurred_at);
"""


class MonitorApplication(Application):
    name = "monitor"


def build(settings: ServiceSettings) -> tuple[ServiceRuntime, list[APIRouter]]:
    runtime = ServiceRuntime(
        name="monitor",
        settings=settings,
        application_factory=lambda env: MonitorApplication(env=env),
        translate=lambda event: None,
    )
    events_total = Counter(
        "liteclaw_events_total",
        "Events seen by the monitor",
        ["service", "type"],
        registry=runtime.registry,
    )

    unknown_total = Counter(
        "liteclaw_events_unknown_total",
        "Messages the monitor could not parse as a known contract, by subject",
        ["subject"],
        registry=runtime.registry,
    )

    async def start() -> None:
        async with runtime.pool.acquire() as conn:
            await conn.execute(DDL)

    runtime.on_start(start)

    def follow(service: str) -> None:
        @runtime.broker.subscriber(
            f"liteclaw.{service}.>",
            stream=JStream(stream_name(service), declare=False),
            durable=f"monitor-{service}",
            pull_sub=PullSub(batch_size=256, timeout=1.0),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_wait=60),
            ack_policy=AckPolicy.MANUAL,
        )
        @message_handler(runtime.broker)
        async def on_event(msg: NatsMessage) -> None:
            try:
                event = parse_event(msg.body)
            except ValidationError:
                # Not a contract this monitor knows (e.g. a newer type): count it by
                # subject so it is visible, and move on.
                unknown_total.labels(msg.raw_message.subject).inc()
                await msg.ack()
                return
            async with runtime.pool.acquire() as conn:
                inserted = await conn.fetchval(
                    """INSERT INTO events_seen (event_id, type, service, occurred_at)
                       VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING true""",
                    event.event_id,
                    event.type,  # type: ignore[attr-defined]
                    service,
                    event.occurred_at,
                )
            if inserted:
                events_total.labels(service, event.type).inc()  # type: ignore[attr-defined]
            await msg.ack()

    for service in SERVICES:
        follow(service)

    router = APIRouter(prefix="/v1")

    @router.get("/events/counts")
    async def counts() -> dict[str, Any]:
        async with runtime.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT service, type, count(*) AS n FROM events_seen GROUP BY 1, 2 ORDER BY 1, 2"
            )
        return {"items": [dict(r) for r in rows]}

    return runtime, [router]


def main() -> None:
    from shared.runtime import serve

    runtime, routers = build(ServiceSettings())  # type: ignore[call-arg]
    serve(runtime, routers)
