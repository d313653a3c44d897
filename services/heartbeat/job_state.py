"""What the heartbeat service knows of jobs and profiles, from the scheduler's events:
enough to tell that a slot's job was disabled or deleted, or its owner paused
heartbeats, after the slot was emitted (``skippedDisabled``).

Fed by durable consumers of ``liteclaw.scheduler.heartbeat_job_*`` and
``liteclaw.scheduler.profile_updated``; each row keeps the ``occurred_at`` of the event
that set it, so an older event redelivered late never overwrites a newer one.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from shared.contracts import (
    Event,
    HeartbeatJobCreated,
    HeartbeatJobDeleted,
    HeartbeatJobUpdated,
    ProfileUpdated,
)

DDL = """
CREATE TABLE IF NOT EXISTS job_state (
    job_id uuid PRIMARY KEY,
    enabled boolean NOT NULL,
    deleted boolean NOT NULL,
    changed_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS user_state (
    user_id text PRIMARY KEY,
    heartbeats_enabled boolean NOT NULL,
    changed_at timestamptz NOT NULL
);
"""

SUBJECTS = (
    HeartbeatJobCreated.subject(),
    HeartbeatJobUpdated.subject(),
    HeartbeatJobDeleted.subject(),
    ProfileUpdated.subject(),
)


async def apply(pool: asyncpg.Pool, event: Event) -> None:
    async with pool.acquire() as conn:
        if isinstance(event, HeartbeatJobCreated):
            await _job(conn, event.job_id, True, False, event)
        elif isinstance(event, HeartbeatJobUpdated) and event.enabled is not None:
            await _job(conn, event.job_id, event.enabled, False, event)
        elif isinstance(event, HeartbeatJobDeleted):
            await conn.execute(
                """INSERT INTO job_state (job_id, enabled, deleted, changed_at)
                   VALUES ($1, false, true, $2)
                   ON CONFLICT (job_id) DO UPDATE SET deleted = true""",
                event.job_id,
                event.occurred_at,
            )
        elif isinstance(event, ProfileUpdated):
            await conn.execute(
                """INSERT INTO user_state (user_id, heartbeats_enabled, changed_at)
                   VALUES ($1, $2, $3)
                   ON CONFLICT (user_id) DO UPDATE SET heartbeats_enabled = $2, changed_at = $3
                   WHERE user_state.changed_at <= $3""",
                event.user_id,
                event.heartbeats_enabled,
                event.occurred_at,
            )


async def _job(
    conn: asyncpg.Connection, job_id: UUID, enabled: bool, deleted: bool, event: Event
) -> None:
    await conn.execute(
        """INSERT INTO job_state (job_id, enabled, deleted, changed_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (job_id) DO UPDATE SET enabled = $2, changed_at = $4
           WHERE job_state.changed_at <= $4""",
        job_id,
        enabled,
        deleted,
        event.occurred_at,
    )


async def disabled_reason(pool: asyncpg.Pool, job_id: UUID, user_id: str) -> str | None:
    """Why a slot of this job must not be delivered now, or None."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT j.enabled, j.deleted, u.heartbeats_enabled
               FROM (SELECT 1) AS one
               LEFT JOIN job_state j ON j.job_id = $1
               LEFT JOIN user_state u ON u.user_id = $2""",
            job_id,
            user_id,
        )
    if row is None:
        return None
    if row["deleted"]:
        return "job deleted"
    if row["enabled"] is False:
        return "job disabled"
    if row["heartbeats_enabled"] is False:
        return "heartbeats paused by the user"
    return None
