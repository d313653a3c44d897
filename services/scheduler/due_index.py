"""The due index: one row per heartbeat job with its next slot, kept by a tracked
projection of the scheduler's own events, and fired by the ticker.

Each tick claims due rows with ``FOR UPDATE SKIP LOCKED``, publishes their ``SlotDue``
(``Nats-Msg-Id`` = slot key) and advances them in the same transaction. A crash before
the commit leaves the rows due, so they are published again with the same slot keys:
JetStream drops the repeat inside its duplicate window and the heartbeat service's
durable record drops it after that. The tick reads only due rows through an index, so
its cost grows with the slots due, not with the jobs registered.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from uuid import UUID

import asyncpg
from faststream.nats import NatsBroker
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.scheduler.domain import HeartbeatJob, Profile
from services.scheduler.schedule import CronSpec, Slot, next_slot, parse_zone
from shared.contracts import SlotDue, stream_name
from shared.projection import Item, TrackedFollower

log = logging.getLogger(__name__)
tracer = trace.get_tracer("liteclaw.scheduler")

PUBLISH_CONCURRENCY = 256


@lru_cache(maxsize=4096)
def _spec(expr: str) -> CronSpec:
    return CronSpec.parse(expr)


def compute_next(
    job_id: UUID, cron: str, timezone: str, version: int, after: datetime
) -> Slot | None:
    return next_slot(
        _spec(cron), parse_zone(timezone), after, job_id=job_id, schedule_version=version
    )


JOBS_DDL = """
CREATE TABLE IF NOT EXISTS profiles (
    user_id text PRIMARY KEY,
    timezone text NOT NULL,
    heartbeats_enabled boolean NOT NULL,
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
    enabled boolean NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    heartbeats_enabled boolean NOT NULL,
    next_fire_at timestamptz,
    slot_key text,
    local_time text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (next_fire_at) WHERE next_fire_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user_id);
"""


class DueIndexProjection(TrackedFollower):
    """Profiles and jobs as the ticker needs them, rebuilt from the scheduler's events."""

    name = "due_index"

    async def setup_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(JOBS_DDL)

    async def process(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        now = datetime.now(UTC)
        for _, event in items:
            if isinstance(event, Profile.Registered | Profile.Changed):
                await self._profile(conn, event, now)
            elif isinstance(event, HeartbeatJob.Created):
                await self._job_created(conn, event, now)

    async def _profile(self, conn: asyncpg.Connection, event: Any, now: datetime) -> None:
        await conn.execute(
            """INSERT INTO profiles (user_id, timezone, heartbeats_enabled, updated_at)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (user_id) DO UPDATE SET timezone = $2, heartbeats_enabled = $3,
                   updated_at = $4""",
            event.user_id,
            event.timezone,
            event.heartbeats_enabled,
            event.timestamp,
        )
        # A zone change moves future slots only: recompute each job's next slot from now.
        jobs = await conn.fetch(
            "SELECT job_id, schedule_cron, schedule_version, enabled, deleted FROM jobs "
            "WHERE user_id = $1",
            event.user_id,
        )
        for job in jobs:
            active = job["enabled"] and not job["deleted"] and event.heartbeats_enabled
            slot = (
                compute_next(
                    job["job_id"],
                    job["schedule_cron"],
                    event.timezone,
                    job["schedule_version"],
                    now,
                )
                if active
                else None
            )
            await conn.execute(
                """UPDATE jobs SET timezone = $2, heartbeats_enabled = $3, next_fire_at = $4,
                       slot_key = $5, local_time = $6, updated_at = $7 WHERE job_id = $1""",
                job["job_id"],
                event.timezone,
                event.heartbeats_enabled,
                slot.at if slot else None,
                slot.key if slot else None,
                slot.local_iso if slot else None,
                event.timestamp,
            )

    async def _job_created(self, conn: asyncpg.Connection, event: Any, now: datetime) -> None:
        profile = await conn.fetchrow(
            "SELECT timezone, heartbeats_enabled FROM profiles WHERE user_id = $1", event.user_id
        )
        timezone = profile["timezone"] if profile else "UTC"
        enabled_by_user = bool(profile["heartbeats_enabled"]) if profile else False
        slot = (
            compute_next(event.originator_id, event.schedule_cron, timezone, 1, now)
            if enabled_by_user
            else None
        )
        await conn.execute(
            """INSERT INTO jobs (job_id, user_id, job_type, schedule_cron, schedule_version,
                   channel, timezone, enabled, heartbeats_enabled, next_fire_at, slot_key,
                   local_time, created_at, updated_at)
               VALUES ($1, $2, $3, $4, 1, $5, $6, true, $7, $8, $9, $10, $11, $11)
               ON CONFLICT (job_id) DO NOTHING""",
            event.originator_id,
            event.user_id,
            event.job_type,
            event.schedule_cron,
            json.dumps(event.channel),
            timezone,
            enabled_by_user,
            slot.at if slot else None,
            slot.key if slot else None,
            slot.local_iso if slot else None,
            event.timestamp,
        )


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
        registry: CollectorRegistry,
    ) -> None:
        self.pool = pool
        self.broker = broker
        self.job_types = job_types
        self.batch = batch
        self.max_sleep = max_sleep
        self._wake = asyncio.Event()
        self.emitted = Counter(
            "liteclaw_scheduler_slots_emitted_total", "SlotDue events published", registry=registry
        )
        self.tick_seconds = Histogram(
            "liteclaw_scheduler_tick_seconds",
            "Time of one tick that found due slots",
            registry=registry,
        )

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                emitted = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database or broker down: retry, never die
                log.warning(
                    "tick failed; retrying", extra={"fields": {"error_class": type(exc).__name__}}
                )
                await asyncio.sleep(self.max_sleep)
                continue
            if emitted >= self.batch:
                continue  # more is due right now
            await self._sleep_until_next_due()

    async def _sleep_until_next_due(self) -> None:
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
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=timeout)
        except TimeoutError:
            pass

    async def tick(self, now: datetime | None = None) -> int:
        """Publish every slot due at ``now`` (up to one batch); return how many."""
        now = now or datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT job_id, user_id, job_type, schedule_cron, schedule_version, channel,
                          timezone, next_fire_at, slot_key, local_time
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
                return 0
            with self.tick_seconds.time():
                for start in range(0, len(rows), PUBLISH_CONCURRENCY):
                    chunk = rows[start : start + PUBLISH_CONCURRENCY]
                    await asyncio.gather(*(self._publish(row) for row in chunk))
                updates = []
                for row in rows:
                    # The next slot after the one just fired; if the scheduler fell behind,
                    # do not replay every missed slot: continue from now.
                    after = max(row["next_fire_at"], now)
                    slot = compute_next(
                        row["job_id"],
                        row["schedule_cron"],
                        row["timezone"],
                        row["schedule_version"],
                        after,
                    )
                    updates.append(
                        (
                            row["job_id"],
                            slot.at if slot else None,
                            slot.key if slot else None,
                            slot.local_iso if slot else None,
                        )
                    )
                await conn.executemany(
                    "UPDATE jobs SET next_fire_at = $2, slot_key = $3, local_time = $4 "
                    "WHERE job_id = $1",
                    updates,
                )
            self.emitted.inc(len(rows))
            return len(rows)

    async def _publish(self, row: asyncpg.Record) -> None:
        event = SlotDue(
            slot_key=row["slot_key"],
            job_id=row["job_id"],
            user_id=row["user_id"],
            job_type=row["job_type"],
            schedule_version=row["schedule_version"],
            scheduled_for=row["next_fire_at"],
            local_time=row["local_time"],
            timezone=row["timezone"],
            channel=json.loads(row["channel"]),
        )
        with tracer.start_as_current_span(
            "scheduler.slot_due",
            attributes={"liteclaw.slot_key": event.slot_key, "liteclaw.job_id": str(event.job_id)},
        ):
            await self.broker.publish(
                event.model_dump_json().encode(),
                subject=SlotDue.subject(),
                headers={"Nats-Msg-Id": event.slot_key, "content-type": "application/json"},
                stream=stream_name("scheduler"),
                timeout=5.0,
            )
            log.info(
                "slot due",
                extra={
                    "fields": {
                        "decision": "slot_due",
                        "slot_key": event.slot_key,
                        "job_id": str(event.job_id),
                        "user_id": event.user_id,
                        "scheduled_for": event.scheduled_for.isoformat(),
                    }
                },
            )
