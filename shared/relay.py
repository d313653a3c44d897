"""The relay: publishes each stored event, translated to its contract, to the owning
service's JetStream stream.

``Nats-Msg-Id`` is ``<originator id>:<version>``, so a re-publish after a crash between
publishing and advancing the position is dropped by JetStream's duplicate window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID, uuid5

import asyncpg
from eventsourcing.domain import DomainEventProtocol
from faststream.nats import NatsBroker

from shared.broker import jetstream, message_headers, publish_many
from shared.contracts import Event, ServiceStarted, stream_name
from shared.eventstore import ServiceInstance
from shared.projection import Item, TrackedFollower

# A translator maps a stored domain event to its wire contract (or None: not published),
# built with the given ``event_id``: the relay derives it from the stored event's id and
# version, so a re-publish carries the same event_id and consumers that dedup by it count
# the event once, even beyond JetStream's duplicate window.
Translator = Callable[[DomainEventProtocol, UUID], Event | None]

PUBLISH_CHUNK = 500
_EVENT_NS = UUID("6f1c1f3e-2d0b-5c55-9a3e-6c1a2b7d9e10")


def event_id_for(msg_id: str) -> UUID:
    """The ``event_id`` of the stored event relayed under ``msg_id``: the same on every
    re-publish."""
    return uuid5(_EVENT_NS, msg_id)


def translate_common(domain_event: DomainEventProtocol, event_id: UUID) -> Event | None:
    if isinstance(domain_event, ServiceInstance.Started):
        return ServiceStarted(
            event_id=event_id,
            service=domain_event.service,
            instance_id=domain_event.instance_id,
            pid=domain_event.pid,
            version=domain_event.release,
            occurred_at=domain_event.timestamp,
        )
    return None


class Relay(TrackedFollower):
    name = "relay:jetstream"

    def __init__(
        self, *, service: str, broker: NatsBroker, translate: Translator, **kw: object
    ) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.service = service
        self.broker = broker
        self.translate = translate
        self.published = 0

    async def process(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        pending: list[tuple[Event, str]] = []
        for notification, domain_event in items:
            msg_id = f"{notification.originator_id}:{notification.originator_version}"
            event_id = event_id_for(msg_id)
            contract = translate_common(domain_event, event_id) or self.translate(
                domain_event, event_id
            )
            if contract is not None:
                pending.append((contract, msg_id))
        # Publish in pipelined chunks, straight to JetStream on the broker's connection
        # (FastStream's per-message publish middlewares cost more than the publish at
        # burst rates, and a relayed event has no trace of its own to carry). A failure
        # raises, the transaction rolls back and the whole batch is published again
        # (duplicates are dropped by msg id).
        stream = stream_name(self.service)
        for start in range(0, len(pending), PUBLISH_CHUNK):
            chunk = pending[start : start + PUBLISH_CHUNK]
            await publish_many(
                jetstream(self.broker),
                [
                    (self._subject(c), c.model_dump_json().encode(), message_headers(m))
                    for c, m in chunk
                ],
                stream=stream,
            )
        self.published += len(pending)

    def _subject(self, contract: Event) -> str:
        if isinstance(contract, ServiceStarted):
            return ServiceStarted.subject_for(self.service)
        return contract.subject()
