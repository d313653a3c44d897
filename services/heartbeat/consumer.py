"""The SlotDue consumer: decide, deliver, record, and only then ack.

One durable pull consumer is shared by every heartbeat instance. FastStream fetches
batches; ``accept`` starts one task per message, at most ``DELIVERY_CONCURRENCY`` at a
time (it waits for a free place before it returns, so fetching pauses while the instance
is full), and ``drain`` lets them finish on shutdown. For each message:

1. Parse it. A message that does not parse is redelivered a bounded number of times and
   then sent to ``liteclaw.dlq.heartbeat`` with the reason; it never blocks the consumer.
2. The slot already has a durable outcome: log ``skippedDuplicate``, ack.
3. The slot's instant is still ahead: log ``skippedNotDue`` and Nak with a delay, so it
   comes back at its instant.
4. The job was disabled or deleted, or the user paused heartbeats, since the slot was
   emitted: record ``skippedDisabled``. Inside the user's quiet hours: record
   ``skippedQuietHours``. The text renders empty: record ``skippedEmpty``.
5. Otherwise deliver, and record ``sent`` or ``failed`` (a failed slot also goes to the
   dead-letter subject with its reason).

Records are saved through the group committer; the save is the durable dedup (a
concurrent twin loses with IntegrityError and becomes ``skippedDuplicate``). Only after
the save returns is the message acked. Infrastructure errors (database down) Nak with
backoff: the slot is retried, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from faststream.nats import NatsBroker
from nats.aio.msg import Msg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from prometheus_client import CollectorRegistry, Counter, Histogram
from pydantic import ValidationError

from services.heartbeat import job_state
from services.heartbeat.channels import Sender, Template
from services.heartbeat.domain import (
    FAILED,
    SENT,
    SKIPPED_DISABLED,
    SKIPPED_DUPLICATE,
    SKIPPED_EMPTY,
    SKIPPED_NOT_DUE,
    SKIPPED_QUIET_HOURS,
    Delivery,
    delivery_id,
)
from services.heartbeat.group_commit import Coalescer, GroupCommitter
from shared.contracts import DeadLetter, QuietHours, SlotDue, dlq_subject

log = logging.getLogger(__name__)
tracer = trace.get_tracer("liteclaw.heartbeat")

# A slot published a little early (clock skew between hosts) is delivered, not bounced.
EARLY_TOLERANCE_S = 0.25


def in_quiet_hours(quiet: QuietHours | None, local_time: str) -> bool:
    if quiet is None:
        return False
    start = datetime.strptime(quiet.start, "%H:%M").time()
    end = datetime.strptime(quiet.end, "%H:%M").time()
    now = datetime.fromisoformat(local_time).time()
    if start == end:
        return False
    return start <= now < end if start < end else (now >= start or now < end)


def _redact(body: str) -> str:
    """Dead letters keep the slot but never the channel's signing secret."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict) and isinstance(data.get("channel"), dict):
        if "secret" in data["channel"]:
            data["channel"]["secret"] = "[redacted]"  # noqa: S105 - a placeholder
        return json.dumps(data)
    return body


class SlotDueConsumer:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        events_table: str,
        committer: GroupCommitter,
        broker: NatsBroker,
        sender: Sender,
        template: Template,
        max_deliver: int,
        concurrency: int,
        record_spans: bool,
        registry: CollectorRegistry,
        on_recorded: Any,
    ) -> None:
        self.pool = pool
        self._places = asyncio.Semaphore(concurrency)
        # Without a trace exporter no span is recorded; the slot's trace id still comes
        # with the message and reaches the log lines, so skip the span altogether.
        self._record_spans = record_spans
        self._inflight: set[asyncio.Task[None]] = set()
        # The event store's own table, read directly: one indexed lookup on the event
        # loop instead of a trip through the synchronous recorder's thread pool.
        self.events_table = events_table
        self.committer = committer
        # Hundreds of handlers run at once: answer their lookups a batch per query.
        self._lookup: Coalescer[SlotDue, tuple[bool, str | None]] = Coalescer(self._look_up)
        self.broker = broker
        self.sender = sender
        self.template = template
        self.max_deliver = max_deliver
        self.on_recorded = on_recorded
        self.outcomes = Counter(
            "liteclaw_heartbeat_outcomes_total",
            "Heartbeat decisions by runbook name (sent, failed, skipped*)",
            ["outcome"],
            registry=registry,
        )
        self.phase = Histogram(
            "liteclaw_heartbeat_phase_seconds",
            "Time spent per message in each phase of a decision",
            ["phase"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self._lookup_time = self.phase.labels("lookup")
        self._deliver_time = self.phase.labels("deliver")
        self._record_time = self.phase.labels("record")
        self.lateness = Histogram(
            "liteclaw_heartbeat_lateness_seconds",
            "Seconds from a slot's instant to its recorded outcome",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
            registry=registry,
        )

    async def accept(self, batch: list[Msg]) -> None:
        """Start handling every message of a fetched batch, each in a task of its own;
        wait for a free place whenever ``concurrency`` messages are in flight."""
        for msg in batch:
            await self._places.acquire()
            task = asyncio.create_task(self.handle(msg))
            self._inflight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._places.release()
        if not task.cancelled() and task.exception() is not None:
            # Not acked: JetStream redelivers it after ack_wait.
            log.error("slot handler crashed", exc_info=task.exception())

    async def drain(self, grace: float) -> None:
        """On shutdown: let the messages in flight finish (recorded and acked); cancel
        what is still running after ``grace`` s (unacked, so it is redelivered)."""
        if not self._inflight:
            return
        log.info("finishing deliveries in flight", extra={"fields": {"n": len(self._inflight)}})
        _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered or 1
        # The slot's trace (started by the scheduler's publish) continues here, so this
        # slot's log lines and its heartbeat.deliver span belong to it.
        token = otel_context.attach(propagate.extract(msg.headers or {}))
        try:
            try:
                slot = SlotDue.model_validate_json(msg.data)
            except ValidationError as exc:
                await self._poison(msg, deliveries, exc)
                return
            try:
                await self._decide(msg, slot, deliveries)
            except Exception as exc:
                # The outcome is not durable: do not ack. Back off and let JetStream
                # redeliver.
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
                await msg.nak(delay=delay)
        finally:
            otel_context.detach(token)

    async def _look_up(self, slots: list[SlotDue]) -> list[tuple[bool, str | None]]:
        """For each slot: whether its outcome is already stored, and why it must not be
        delivered now (job disabled or deleted, user paused), if so."""
        ids = [delivery_id(slot.slot_key) for slot in slots]
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT DISTINCT originator_id FROM {self.events_table} "  # noqa: S608
                "WHERE originator_id = ANY($1::uuid[])",
                ids,
            )
            reasons = await job_state.disabled_reasons(
                conn, [(slot.job_id, slot.user_id) for slot in slots]
            )
        found = {r["originator_id"] for r in rows}
        return [(i in found, reason) for i, reason in zip(ids, reasons, strict=True)]

    async def _decide(self, msg: Msg, slot: SlotDue, deliveries: int) -> None:
        fields: dict[str, Any] = {
            "slot_key": slot.slot_key,
            "job_id": str(slot.job_id),
            "user_id": slot.user_id,
            "scheduled_for": slot.scheduled_for.isoformat(),
            "deliveries": deliveries,
        }
        with self._lookup_time.time():
            duplicate, disabled = await self._lookup.submit(slot)
        if duplicate:
            self._decision(SKIPPED_DUPLICATE, fields)
            await msg.ack()
            return
        ahead = (slot.scheduled_for - datetime.now(UTC)).total_seconds()
        if ahead > EARLY_TOLERANCE_S:
            self._decision(SKIPPED_NOT_DUE, {**fields, "due_in_s": round(ahead, 3)})
            await msg.nak(delay=ahead)
            return
        text = self.template.render(slot)
        skip, detail = self._skip_reason(slot, disabled, text)
        if skip:
            record = Delivery.skipped(
                slot.slot_key, slot.job_id, slot.user_id, slot.scheduled_for, skip
            )
            await self._record(msg, slot, record, skip, {**fields, "detail": detail})
            return
        span = (
            tracer.start_as_current_span(
                "heartbeat.deliver",
                attributes={
                    "liteclaw.slot_key": slot.slot_key,
                    "liteclaw.channel": slot.channel.type,
                },
            )
            if self._record_spans
            else contextlib.nullcontext()
        )
        with span, self._deliver_time.time():
            result = await self.sender.deliver(slot, text)
        if result.ok:
            record = Delivery.sent(
                slot.slot_key, slot.job_id, slot.user_id, slot.scheduled_for, result.attempts
            )
            await self._record(msg, slot, record, SENT, {**fields, "attempts": result.attempts})
            return
        record = Delivery.failed(
            slot.slot_key,
            slot.job_id,
            slot.user_id,
            slot.scheduled_for,
            result.attempts,
            result.error_class,
            result.error,
        )
        extra = {
            "attempts": result.attempts,
            "error_class": result.error_class,
            "error": result.error,
        }
        reason = f"{result.error_class}: {result.error}"
        await self._record(
            msg,
            slot,
            record,
            FAILED,
            {**fields, **extra},
            before_ack=lambda: self._dead_letter(msg, deliveries, reason=reason),
        )

    def _skip_reason(
        self, slot: SlotDue, disabled: str | None, text: str
    ) -> tuple[str | None, str]:
        if disabled:
            return SKIPPED_DISABLED, disabled
        if in_quiet_hours(slot.quiet_hours, slot.local_time):
            assert slot.quiet_hours is not None
            return SKIPPED_QUIET_HOURS, f"{slot.quiet_hours.start}-{slot.quiet_hours.end}"
        if not text.strip():
            return SKIPPED_EMPTY, "the template rendered no text"
        return None, ""

    async def _record(
        self,
        msg: Msg,
        slot: SlotDue,
        record: Delivery,
        outcome: str,
        fields: dict[str, Any],
        before_ack: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Save the outcome, then ack. False when another delivery recorded it first.
        ``before_ack`` runs between the save and the ack (the dead letter of a failed
        slot). If it raises, the message is redelivered and the duplicate path acks it:
        that dead letter is then missing, but the failure is durable and its
        HeartbeatFailed event still reaches the monitor."""
        with self._record_time.time():
            new = await self.committer.save(record)
        if not new:
            self._decision(SKIPPED_DUPLICATE, fields)
            await msg.ack()
            return False
        if before_ack is not None:
            await before_ack()
        self._decision(outcome, fields)
        self.lateness.observe(max(0.0, (datetime.now(UTC) - slot.scheduled_for).total_seconds()))
        self.on_recorded()
        await msg.ack()
        return True

    def _decision(self, outcome: str, fields: dict[str, Any]) -> None:
        self.outcomes.labels(outcome).inc()
        level = logging.ERROR if outcome == FAILED else logging.INFO
        log.log(level, "heartbeat outcome", extra={"fields": {"outcome": outcome, **fields}})

    async def _poison(self, msg: Msg, deliveries: int, exc: ValidationError) -> None:
        reason = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        if deliveries < self.max_deliver:
            log.warning(
                "unparseable SlotDue; will redeliver",
                extra={"fields": {"reason": reason, "deliveries": deliveries}},
            )
            await msg.nak(delay=0.5)
            return
        await self._dead_letter(msg, deliveries, f"invalid SlotDue: {reason}")
        log.error(
            "unparseable SlotDue dead-lettered",
            extra={"fields": {"reason": reason, "deliveries": deliveries}},
        )
        await msg.term()

    async def _dead_letter(self, msg: Msg, deliveries: int, reason: str) -> None:
        body = _redact(msg.data[:65536].decode("utf-8", "replace"))
        letter = DeadLetter(
            service="heartbeat",
            subject=msg.subject,
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
