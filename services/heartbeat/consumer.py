"""The SlotDue consumer: decide, deliver, record, and only then ack.

One durable pull consumer is shared by every heartbeat instance. For each message:

1. Parse it. A message that does not parse is redelivered a bounded number of times and
   then sent to ``liteclaw.dlq.heartbeat`` with the reason; it never blocks the consumer.
2. If the slot already has a durable outcome: ``skippedDuplicate``, ack.
3. If the slot's instant is still ahead: ``skippedNotDue``, Nak with a delay so it comes
   back at its instant.
4. Deliver, store ``Delivery.Sent`` or ``Delivery.Failed`` (the save is the durable
   dedup: a concurrent twin raises IntegrityError and becomes ``skippedDuplicate``), ack.
   A failed slot also goes to the dead-letter subject with its reason.

Infrastructure errors (database down) Nak with backoff; the slot is retried, not lost.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from eventsourcing.persistence import IntegrityError
from faststream.nats import NatsBroker, NatsMessage
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from services.heartbeat.channels import Sender
from services.heartbeat.domain import (
    FAILED,
    SENT,
    SKIPPED_DUPLICATE,
    SKIPPED_NOT_DUE,
    Delivery,
)
from shared.contracts import DeadLetter, SlotDue, dlq_subject
from shared.eventstore import EventStore

log = logging.getLogger(__name__)
tracer = trace.get_tracer("liteclaw.heartbeat")

# A slot published a little early (clock skew between hosts) is delivered, not bounced.
EARLY_TOLERANCE_S = 0.25


class SlotDueConsumer:
    def __init__(
        self,
        *,
        store: EventStore,
        broker: NatsBroker,
        sender: Sender,
        max_deliver: int,
        registry: CollectorRegistry,
        on_recorded: Any,
    ) -> None:
        self.store = store
        self.broker = broker
        self.sender = sender
        self.max_deliver = max_deliver
        self.on_recorded = on_recorded
        self.outcomes = Counter(
            "liteclaw_heartbeat_outcomes_total",
            "Heartbeat outcomes by runbook name",
            ["outcome"],
            registry=registry,
        )
        self.lateness = Histogram(
            "liteclaw_heartbeat_lateness_seconds",
            "Seconds from a slot's instant to its recorded outcome",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=registry,
        )

    async def handle(self, msg: NatsMessage) -> None:
        deliveries = msg.raw_message.metadata.num_delivered or 1
        try:
            slot = SlotDue.model_validate_json(msg.body)
        except ValidationError as exc:
            await self._poison(msg, deliveries, exc)
            return
        try:
            await self._decide(msg, slot)
        except Exception as exc:
            # The outcome is not durable: do not ack. Back off and let JetStream redeliver.
            delay = min(2.0 ** min(deliveries, 5), 30.0)
            log.warning(
                "could not record outcome; will retry",
                extra={
                    "fields": {
                        "slot_key": slot.slot_key,
                        "error_class": type(exc).__name__,
                        "retry_in_s": delay,
                        "deliveries": deliveries,
                    }
                },
            )
            await msg.nack(delay=delay)

    async def _decide(self, msg: NatsMessage, slot: SlotDue) -> None:
        fields = {
            "slot_key": slot.slot_key,
            "job_id": str(slot.job_id),
            "user_id": slot.user_id,
            "scheduled_for": slot.scheduled_for.isoformat(),
        }
        if await self.store.call(self.store.app.has_outcome, slot.slot_key):  # type: ignore[attr-defined]
            self._decision(SKIPPED_DUPLICATE, fields)
            await msg.ack()
            return
        ahead = (slot.scheduled_for - datetime.now(UTC)).total_seconds()
        if ahead > EARLY_TOLERANCE_S:
            self._decision(SKIPPED_NOT_DUE, {**fields, "due_in_s": round(ahead, 3)})
            await msg.nack(delay=ahead)
            return
        with tracer.start_as_current_span(
            "heartbeat.deliver",
            attributes={"liteclaw.slot_key": slot.slot_key, "liteclaw.channel": slot.channel.type},
        ):
            result = await self.sender.deliver(slot)
        if result.ok:
            record = Delivery.sent(
                slot.slot_key, slot.job_id, slot.user_id, slot.scheduled_for, result.attempts
            )
        else:
            record = Delivery.failed(
                slot.slot_key,
                slot.job_id,
                slot.user_id,
                slot.scheduled_for,
                result.attempts,
                result.error_class,
                result.error,
            )
        try:
            await self.store.save(record)
        except IntegrityError:
            # Another instance recorded this slot first (a redelivery raced us).
            self._decision(SKIPPED_DUPLICATE, fields)
            await msg.ack()
            return
        outcome = SENT if result.ok else FAILED
        extra: dict[str, object] = {"attempts": result.attempts}
        if not result.ok:
            extra |= {"error_class": result.error_class, "error": result.error}
            await self._dead_letter(
                msg, deliveries=1, reason=f"{result.error_class}: {result.error}"
            )
        self._decision(outcome, {**fields, **extra})
        self.lateness.observe(max(0.0, (datetime.now(UTC) - slot.scheduled_for).total_seconds()))
        self.on_recorded()
        await msg.ack()

    def _decision(self, outcome: str, fields: dict[str, Any]) -> None:
        self.outcomes.labels(outcome).inc()
        level = logging.ERROR if outcome == FAILED else logging.INFO
        log.log(level, "heartbeat outcome", extra={"fields": {"outcome": outcome, **fields}})

    async def _poison(self, msg: NatsMessage, deliveries: int, exc: ValidationError) -> None:
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        if deliveries < self.max_deliver:
            log.warning(
                "unparseable SlotDue; will redeliver",
                extra={"fields": {"reason": reason, "deliveries": deliveries}},
            )
            await msg.nack(delay=0.5)
            return
        await self._dead_letter(msg, deliveries, f"invalid SlotDue: {reason}")
        log.error(
            "unparseable SlotDue dead-lettered",
            extra={"fields": {"reason": reason, "deliveries": deliveries}},
        )
        await msg.reject()

    async def _dead_letter(self, msg: NatsMessage, deliveries: int, reason: str) -> None:
        body = msg.body[:65536].decode("utf-8", "replace")
        letter = DeadLetter(
            service="heartbeat",
            subject=msg.raw_message.subject,
            reason=reason,
            deliveries=deliveries,
            payload=body,
        )
        await self.broker.publish(
            letter.model_dump_json().encode(),
            subject=dlq_subject("heartbeat"),
            stream="LITECLAW_DLQ",
            timeout=5.0,
        )
