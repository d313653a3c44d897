"""Composition root of the monitor process.

The monitor follows every service's stream with its own durable consumer and keeps one
row per event id (so redeliveries count once) and Prometheus counters by event type.
"""

from __future__ import annotations

import logging
from typing import Any

from eventsourcing.application import Application
from fastapi import APIRouter
from faststream.nats import ConsumerConfig, DeliverPolicy
from nats.aio.msg import Msg
from prometheus_client import Counter
from pydantic import ValidationError

from shared.broker import batch_subscriber
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
        translate=lambda event, event_id: None,
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
        @batch_subscriber(
            runtime.broker,
            f"liteclaw.{service}.>",
            stream=stream_name(service),
            durable=f"monitor-{service}",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_wait=60),
        )
        async def on_events(batch: list[Msg]) -> None:
            seen = []
            for msg in batch:
                try:
                    seen.append(parse_event(msg.data))
                except ValidationError:
                    # Not a contract this monitor knows (e.g. a newer type): count it by
                    # subject so it is visible, and move on.
                    unknown_total.labels(msg.subject).inc()
            # One insert per batch; each event_id counts once however often it comes.
            async with runtime.pool.acquire() as conn:
                inserted = await conn.fetch(
                    """INSERT INTO events_seen (event_id, type, service, occurred_at)
                       SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[],
                                            $4::timestamptz[])
                       ON CONFLICT DO NOTHING RETURNING type""",
                    [e.event_id for e in seen],
                    [e.type for e in seen],  # type: ignore[attr-defined]
                    [service] * len(seen),
                    [e.occurred_at for e in seen],
                )
            for row in inserted:
                events_total.labels(service, row["type"]).inc()
            for msg in batch:
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
