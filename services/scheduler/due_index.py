"""The due index: one row per heartbeat job with its next slot, kept by a tracked
projection of the scheduler's own events, and fired by the ticker.

Each tick claims due rows with ``FOR UPDATE SKIP LOCKED``, publishes their ``SlotDue``
(``Nats-Msg-Id`` = slot key) and advances them in the same transaction. A crash before
the commit leaves the rows due, so they are published again with the same slot keys:
JetStream drops the repeat inside its duplicate window and the heartbeat service's
durable record drops it after that. The tick reads only due rows through an index, so
its cost grows with the slots due, not with the jobs registered.

Misfires: a row whose slot is older than the grace window when it is claimed (no
scheduler ran) is caught up by emitting only its latest slot that is still inside the
window; every other slot it passed over is written down in one ``MissedSlots`` record
per job (``skippedMissed``), never as a storm of events.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from uuid import UUID

import asyncpg
from faststream.nats import NatsBroker
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.scheduler.domain import HeartbeatJob, MissedSlots, Profile
from services.scheduler.schedule import (
    CronSpec,
    Slot,
    continue_in_zone,
    iter_slots,
    next_slot,
    parse_zone,
)
from shared.broker import Outgoing, jetstream, message_headers, publish_many
from shared.contracts import SlotDue, stream_name
from shared.projection import Item, TrackedFollower

log = logging.getLogger(__name__)
tracer = trace.get_tracer("liteclaw.scheduler")

PUBLISH_CHUNK = 1000
# How many missed slots of one job are counted one by one before the count is reported
# as a lower bound (a per-second cron over a long outage would otherwise cost minutes).
MISSED_COUNT_CAP = 10_000


@lru_cache(maxsize=4096)
def _spec(expr: str) -> CronSpec:
    return CronSpec.parse(expr)


def compute_next(
    job_id: UUID, cron: str, timezone: str, version: int, after: datetime
) -> Slot | None:
    return next_slot(
        _spec(cron), parse_zone(timezone), after, job_id=job_id, schedule_version=version
    )


def stagger(job_id: UUID, max_seconds: float) -> timedelta:
    """A deterministic per-job offset in [0, max_seconds): the same on every instance
    and every replay, so spreading a top-of-minute burst never changes a slot's key."""
    if max_seconds <= 0:
        return timedelta(0)
    digest = hashlib.sha256(job_id.bytes).digest()
    millis = int.from_bytes(digest[:4], "big") % int(max_seconds * 1000)
    return timedelta(milliseconds=millis)


JOBS_DDL = """
CREATE TABLE IF NOT EXISTS profiles (
    user_id text PRIMARY KEY,
    timezone text NOT NULL,
    heartbeats_enabled boolean NOT NULL,
    quiet_hours jsonb,
    updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id uuid PRIMARY KEY,
    user_id text NOT NULL,
    job_type text NOT NULL,
    schedule_cron text NOT NULL,
    schedule_version integer NOT NULL,
    channel jsonb NOT NULL,
    timezone text NOT NULL,
    quiet_hours jsonb,
    enabled boolean NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    heartbeats_enabled boolean NOT NULL,
    slot_at timestamptz,
    next_fire_at timestamptz,
    slot_key text,
    local_time text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
-- A slot made due at once by a timezone change (that day's heartbeat, moving east):
-- fired even when older than the misfire grace window.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS catch_up boolean NOT NULL DEFAULT false;
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_fire_at) WHERE next_fire_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user_id);
"""


class DueIndexProjection(TrackedFollower):
    """Profiles and jobs as the ticker needs them, rebuilt from the scheduler's events.
    Every change that can move a job's slots recomputes its next slot from now, so
    changes move future slots only: a slot already due and not yet fired stays due.
    A timezone change carries a fixed-time schedule on by the wall clock (see
    ``continue_in_zone``), so that day's heartbeat is neither lost nor repeated."""

    name = "due_index"

    def __init__(self, *, stagger_max: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.stagger_max = stagger_max

    async def setup_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(JOBS_DDL)

    async def process(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        now = datetime.now(UTC)
        created: list[Any] = []
        for _, e in items:
            if isinstance(e, HeartbeatJob.Created):
                # Bulk registrations arrive as long runs of Created: write them together.
                created.append(e)
                continue
            if created:
                await self._jobs_created(conn, created, now)
                created = []
            if isinstance(e, Profile.Registered | Profile.Changed):
                await self._profile(conn, e, now)
            elif isinstance(e, HeartbeatJob.ScheduleChanged):
                await conn.execute(
                    "UPDATE jobs SET schedule_cron = $2, schedule_version = $3, updated_at = $4 "
                    "WHERE job_id = $1",
                    e.originator_id,
                    e.schedule_cron,
                    e.schedule_version,
                    e.timestamp,
                )
                await self._reschedule(conn, e.originator_id, now)
            elif isinstance(e, HeartbeatJob.ChannelChanged):
                await conn.execute(
                    "UPDATE jobs SET channel = $2, updated_at = $3 WHERE job_id = $1",
                    e.originator_id,
                    json.dumps(e.channel),
                    e.timestamp,
                )
            elif isinstance(e, HeartbeatJob.Enabled | HeartbeatJob.Disabled):
                await conn.execute(
                    "UPDATE jobs SET enabled = $2, updated_at = $3 WHERE job_id = $1",
                    e.originator_id,
                    isinstance(e, HeartbeatJob.Enabled),
                    e.timestamp,
                )
                await self._reschedule(conn, e.originator_id, now)
            elif isinstance(e, HeartbeatJob.Deleted):
                await conn.execute(
                    "UPDATE jobs SET deleted = true, slot_at = NULL, next_fire_at = NULL, "
                    "slot_key = NULL, local_time = NULL, updated_at = $2 WHERE job_id = $1",
                    e.originator_id,
                    e.timestamp,
                )
        if created:
            await self._jobs_created(conn, created, now)

    async def _profile(self, conn: asyncpg.Connection, e: Any, now: datetime) -> None:
        quiet = json.dumps(e.quiet_hours) if e.quiet_hours else None
        await conn.execute(
            """INSERT INTO profiles (user_id, timezone, heartbeats_enabled, quiet_hours,
                   updated_at)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (user_id) DO UPDATE SET timezone = $2, heartbeats_enabled = $3,
                   quiet_hours = $4, updated_at = $5""",
            e.user_id,
            e.timezone,
            e.heartbeats_enabled,
            quiet,
            e.timestamp,
        )
        rows = await conn.fetch(
            """WITH old AS (
                   SELECT job_id, timezone, local_time FROM jobs WHERE user_id = $1 FOR UPDATE
               )
               UPDATE jobs SET timezone = $2, heartbeats_enabled = $3, quiet_hours = $4,
                   updated_at = $5
               FROM old WHERE jobs.job_id = old.job_id
               RETURNING jobs.job_id, old.timezone AS old_timezone, old.local_time AS old_local""",
            e.user_id,
            e.timezone,
            e.heartbeats_enabled,
            quiet,
            e.timestamp,
        )
        for row in rows:
            moved_from = (
                row["old_local"] if row["old_timezone"] != e.timezone and row["old_local"] else None
            )
            await self._reschedule(conn, row["job_id"], now, moved_from=moved_from)

    async def _jobs_created(
        self, conn: asyncpg.Connection, events: list[Any], now: datetime
    ) -> None:
        users = list({e.user_id for e in events})
        profiles = {
            r["user_id"]: r
            for r in await conn.fetch(
                "SELECT user_id, timezone, heartbeats_enabled, quiet_hours FROM profiles "
                "WHERE user_id = ANY($1::text[])",
                users,
            )
        }
        rows = []
        for e in events:
            profile = profiles.get(e.user_id)
            timezone = profile["timezone"] if profile else "UTC"
            active = bool(profile["heartbeats_enabled"]) if profile else False
            slot = (
                compute_next(e.originator_id, e.schedule_cron, timezone, 1, now) if active else None
            )
            rows.append(
                (
                    e.originator_id,
                    e.user_id,
                    e.job_type,
                    e.schedule_cron,
                    json.dumps(e.channel),
                    timezone,
                    profile["quiet_hours"] if profile else None,
                    active,
                    e.timestamp,
                    slot.at if slot else None,
                    slot.at + stagger(e.originator_id, self.stagger_max) if slot else None,
                    slot.key if slot else None,
                    slot.local_iso if slot else None,
                )
            )
        await conn.executemany(
            """INSERT INTO jobs (job_id, user_id, job_type, schedule_cron, schedule_version,
                   channel, timezone, quiet_hours, enabled, heartbeats_enabled, created_at,
                   updated_at, slot_at, next_fire_at, slot_key, local_time)
               VALUES ($1, $2, $3, $4, 1, $5, $6, $7, true, $8, $9, $9, $10, $11, $12, $13)
               ON CONFLICT (job_id) DO NOTHING""",
            rows,
        )

    async def _reschedule(
        self, conn: asyncpg.Connection, job_id: UUID, now: datetime, moved_from: str | None = None
    ) -> None:
        """Recompute a job's next slot after a change. ``moved_from`` is the local time
        of the slot it waited for, when the user's timezone changed."""
        row = await conn.fetchrow(
            """SELECT schedule_cron, schedule_version, timezone, enabled, deleted,
                      heartbeats_enabled, slot_at FROM jobs WHERE job_id = $1""",
            job_id,
        )
        if row is None:
            return
        active = row["enabled"] and not row["deleted"] and row["heartbeats_enabled"]
        pending = row["slot_at"] is not None and row["slot_at"] <= now
        if active and pending and moved_from is None:
            return  # already due, not yet fired: a past slot, which changes never move
        catch_up = False
        slot: Slot | None = None
        if active and moved_from is not None:
            slot, catch_up = continue_in_zone(
                _spec(row["schedule_cron"]),
                datetime.fromisoformat(moved_from),
                parse_zone(row["timezone"]),
                now,
                job_id=job_id,
                schedule_version=row["schedule_version"],
            )
        elif active:
            slot = compute_next(
                job_id, row["schedule_cron"], row["timezone"], row["schedule_version"], now
            )
        fire_at = None
        if slot is not None:
            fire_at = now if catch_up else slot.at + stagger(job_id, self.stagger_max)
        await conn.execute(
            """UPDATE jobs SET slot_at = $2, next_fire_at = $3, slot_key = $4, local_time = $5,
                   catch_up = $6
               WHERE job_id = $1""",
            job_id,
            slot.at if slot else None,
            fire_at,
            slot.key if slot else None,
            slot.local_iso if slot else None,
            catch_up,
        )


@dataclass
class TickResult:
    claimed: int = 0
    emitted: int = 0
    missed_jobs: int = 0


class Ticker:
    """Claims due slots and publishes ``SlotDue``; wakes at the next due instant."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        broker: NatsBroker,
        job_types: list[str],
        batch: int,
        max_sleep: float,
        misfire_grace: timedelta,
        stagger_max: float,
        record_missed: Callable[[list[MissedSlots]], Awaitable[int]],
        registry: CollectorRegistry,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.job_types = job_types
        self.batch = batch
        self.max_sleep = max_sleep
        self.grace = misfire_grace
        self.stagger_max = stagger_max
        self.record_missed = record_missed
        self._wake = asyncio.Event()
        self.emitted = Counter(
            "liteclaw_scheduler_slots_emitted_total", "SlotDue events published", registry=registry
        )
        self.missed = Counter(
            "liteclaw_scheduler_slots_missed_total",
            "Slots recorded as skippedMissed (older than MISFIRE_GRACE)",
            registry=registry,
        )
        self.tick_seconds = Histogram(
            "liteclaw_scheduler_tick_seconds",
            "Work of one wake-up: claiming due rows, publishing, and finding the next due "
            "instant; `found` is due or idle",
            ["found"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=registry,
        )
        self.last_tick_ok: datetime | None = None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            started = time.perf_counter()
            try:
                result = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or broker down: retry, never die
                log.warning(
                    "tick failed; retrying",
                    extra={"fields": {"error_class": type(exc).__name__}},
                    exc_info=True,
                )
                await asyncio.sleep(self.max_sleep)
                continue
            if result.claimed >= self.batch:
                self.tick_seconds.labels("due").observe(time.perf_counter() - started)
                continue  # more is due right now
            timeout = await self._next_due_timeout()
            found = "due" if result.claimed else "idle"
            self.tick_seconds.labels(found).observe(time.perf_counter() - started)
            await self._sleep(timeout)

    async def drain(self) -> TickResult:
        """Tick until nothing is due (for `liteclaw heartbeat run`)."""
        total = TickResult()
        while True:
            result = await self.tick()
            total.claimed += result.claimed
            total.emitted += result.emitted
            total.missed_jobs += result.missed_jobs
            if result.claimed < self.batch:
                return total

    async def _next_due_timeout(self) -> float:
        self._wake.clear()
        timeout = self.max_sleep
        try:
            async with self.pool.acquire() as conn:
                next_due = await conn.fetchval(
                    "SELECT min(next_fire_at) FROM jobs WHERE next_fire_at IS NOT NULL "
                    "AND job_type = ANY($1::text[])",
                    self.job_types,
                )
            if next_due is not None:
                timeout = max(0.0, min(timeout, (next_due - datetime.now(UTC)).total_seconds()))
        except Exception as exc:  # sleep the default; the next tick reports the failure
            log.debug(
                "next-due lookup failed", extra={"fields": {"error_class": type(exc).__name__}}
            )
        return timeout

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except TimeoutError:
            pass

    async def tick(self, now: datetime | None = None) -> TickResult:
        """Publish the slots due at ``now`` (up to one batch)."""
        now = now or datetime.now(UTC)
        result = TickResult()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT job_id, user_id, job_type, schedule_cron, schedule_version, channel,
                          timezone, quiet_hours, slot_at, slot_key, local_time, catch_up
                   FROM jobs
                   WHERE next_fire_at <= $1 AND job_type = ANY($2::text[])
                   ORDER BY next_fire_at
                   LIMIT $3
                   FOR UPDATE SKIP LOCKED""",
                now,
                self.job_types,
                self.batch,
            )
            if not rows:
                self.last_tick_ok = now
                return result
            result.claimed = len(rows)
            to_emit: list[tuple[asyncpg.Record, Slot]] = []
            missed: list[MissedSlots] = []
            updates = []
            for row in rows:
                emit, passed_over, capped, nxt = self._plan(row, now)
                if emit is not None:
                    to_emit.append((row, emit))
                if passed_over:
                    missed.append(
                        MissedSlots.record(row["job_id"], row["user_id"], passed_over, capped)
                    )
                updates.append(
                    (
                        row["job_id"],
                        nxt.at if nxt else None,
                        nxt.at + stagger(row["job_id"], self.stagger_max) if nxt else None,
                        nxt.key if nxt else None,
                        nxt.local_iso if nxt else None,
                    )
                )
            # Missed records first: their ids are deterministic, so a retry after a
            # crash records nothing twice.
            if missed:
                await self.record_missed(missed)
                for record in missed:
                    log.warning(
                        "slots missed",
                        extra={
                            "fields": {
                                "outcome": "skippedMissed",
                                "job_id": str(record.job_id),
                                "user_id": record.user_id,
                                "count": record.count,
                                "count_is_lower_bound": record.count_is_lower_bound,
                                "first_slot_key": record.first_slot_key,
                                "last_slot_key": record.last_slot_key,
                            }
                        },
                    )
            for start in range(0, len(to_emit), PUBLISH_CHUNK):
                await self._publish(to_emit[start : start + PUBLISH_CHUNK])
            await conn.executemany(
                "UPDATE jobs SET slot_at = $2, next_fire_at = $3, slot_key = $4, "
                "local_time = $5, catch_up = false WHERE job_id = $1",
                updates,
            )
            result.emitted = len(to_emit)
            result.missed_jobs = len(missed)
        self.emitted.inc(result.emitted)
        self.missed.inc(sum(m.count for m in missed))
        self.last_tick_ok = now
        return result

    def _plan(
        self, row: asyncpg.Record, now: datetime
    ) -> tuple[Slot | None, list[Slot], bool, Slot | None]:
        """For a due row: the slot to emit, the slots it passes over as missed (and
        whether that list was capped), and the row's next slot."""
        slot = Slot(row["slot_key"], row["slot_at"], datetime.fromisoformat(row["local_time"]))
        nxt = compute_next(
            row["job_id"], row["schedule_cron"], row["timezone"], row["schedule_version"], slot.at
        )
        if nxt is None or nxt.at > now:
            # The common case: exactly one slot is due.
            if now - slot.at <= self.grace or row["catch_up"]:
                return slot, [], False, nxt
            return None, [slot], False, nxt
        # Several slots are due at once (an outage, or a lagging scheduler): emit only
        # the latest one still inside the grace window and write down the rest.
        passed, capped = self._slots_between(row, slot.at, now)
        everything = [slot, *passed]
        if capped:
            # The count stopped early: look for the latest fresh slot from the window's
            # start instead of walking the whole outage.
            everything += [
                s
                for s in self._slots_between(row, now - self.grace, now)[0]
                if s.at > everything[-1].at
            ]
        fresh = [s for s in everything if now - s.at <= self.grace or row["catch_up"]]
        emit = fresh[-1] if fresh else None
        after = everything[-1].at
        nxt = compute_next(
            row["job_id"], row["schedule_cron"], row["timezone"], row["schedule_version"], after
        )
        return emit, [s for s in everything if s is not emit], capped, nxt

    def _slots_between(
        self, row: asyncpg.Record, after: datetime, until: datetime
    ) -> tuple[list[Slot], bool]:
        out: list[Slot] = []
        for s in iter_slots(
            _spec(row["schedule_cron"]),
            parse_zone(row["timezone"]),
            after,
            job_id=row["job_id"],
            schedule_version=row["schedule_version"],
        ):
            if s.at > until:
                return out, False
            out.append(s)
            if len(out) >= MISSED_COUNT_CAP:
                return out, True
        return out, False

    async def _publish(self, due: list[tuple[asyncpg.Record, Slot]]) -> None:
        """Publish the SlotDue of each (row, slot), pipelined, with ``Nats-Msg-Id`` = slot
        key; return once JetStream has acked every one (else raise: the tick's
        transaction rolls back and the slots are published again)."""
        messages: list[Outgoing] = []
        decided: list[dict[str, str]] = []
        spans: list[trace.Span] = []
        for row, slot in due:
            quiet = row["quiet_hours"]
            event = SlotDue(
                slot_key=slot.key,
                job_id=row["job_id"],
                user_id=row["user_id"],
                job_type=row["job_type"],
                schedule_version=row["schedule_version"],
                scheduled_for=slot.at,
                local_time=slot.local_iso,
                timezone=row["timezone"],
                channel=json.loads(row["channel"]),
                quiet_hours=json.loads(quiet) if quiet else None,
            )
            # Each slot's trace starts here and travels in its message's headers to the
            # heartbeat (FastStream's publish middlewares, run per message, cost a
            # quarter of the tick's CPU in the burst benchmark, so publishing goes
            # straight to JetStream).
            span = tracer.start_span(
                "scheduler.slot_due",
                attributes={"liteclaw.slot_key": slot.key, "liteclaw.job_id": str(row["job_id"])},
            )
            spans.append(span)
            headers = message_headers(slot.key, trace.set_span_in_context(span))
            messages.append((SlotDue.subject(), event.model_dump_json().encode(), headers))
            decided.append(
                {
                    "decision": "slot_due",
                    "slot_key": slot.key,
                    "job_id": str(row["job_id"]),
                    "user_id": row["user_id"],
                    "scheduled_for": slot.at.isoformat(),
                    "trace_id": format(span.get_span_context().trace_id, "032x"),
                }
            )
        try:
            # Each slot's span lasts until JetStream has acked its message.
            await publish_many(jetstream(self.broker), messages, stream=stream_name("scheduler"))
        finally:
            for span in spans:
                span.end()
        for fields in decided:
            log.info("slot due", extra={"fields": fields})
