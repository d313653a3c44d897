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


_JOB = """INSERT INTO job_state (job_id, enabled, deleted, changed_at) VALUES ($1, $2, false, $3)
           ON CONFLICT (job_id) DO UPDATE SET enabled = $2, changed_at = $3
           WHERE job_state.changed_at <= $3"""
_DELETED = """INSERT INTO job_state (job_id, enabled, deleted, changed_at)
               VALUES ($1, false, true, $2)
               ON CONFLICT (job_id) DO UPDATE SET deleted = true"""
_USER = """INSERT INTO user_state (user_id, heartbeats_enabled, changed_at) VALUES ($1, $2, $3)
           ON CONFLICT (user_id) DO UPDATE SET heartbeats_enabled = $2, changed_at = $3
           WHERE user_state.changed_at <= $3"""


async def apply(conn: asyncpg.Connection, events: list[Event]) -> None:
    """Apply a batch of the scheduler's events, in one transaction. A job's deletion is
    final; anything else only overwrites state set by an older event."""
    rows: dict[str, list[tuple[object, ...]]] = {_JOB: [], _DELETED: [], _USER: []}
    for event in events:
        if isinstance(event, HeartbeatJobCreated):
            rows[_JOB].append((event.job_id, True, event.occurred_at))
        elif isinstance(event, HeartbeatJobUpdated) and event.enabled is not None:
            rows[_JOB].append((event.job_id, event.enabled, event.occurred_at))
        elif isinstance(event, HeartbeatJobDeleted):
            rows[_DELETED].append((event.job_id, event.occurred_at))
        elif isinstance(event, ProfileUpdated):
            rows[_USER].append((event.user_id, event.heartbeats_enabled, event.occurred_at))
    async with conn.transaction():
        for statement, args in rows.items():
            if args:
                await conn.executemany(statement, args)


async def disabled_reasons(
    conn: asyncpg.Connection, keys: list[tuple[UUID, str]]
) -> list[str | None]:
    """For each (job, user): why its slot must not be delivered now, or None."""
    jobs = {
        r["job_id"]: r
        for r in await conn.fetch(
            "SELECT job_id, enabled, deleted FROM job_state WHERE job_id = ANY($1::uuid[])",
            list({job for job, _ in keys}),
        )
    }
    users = {
        r["user_id"]: r["heartbeats_enabled"]
        for r in await conn.fetch(
            "SELECT user_id, heartbeats_enabled FROM user_state WHERE user_id = ANY($1::text[])",
            list({user for _, user in keys}),
        )
    }
    reasons: list[str | None] = []
    for job_id, user_id in keys:
        job = jobs.get(job_id)
        if job is not None and job["deleted"]:
            reasons.append("job deleted")
        elif job is not None and not job["enabled"]:
            reasons.append("job disabled")
        elif users.get(user_id) is False:
            reasons.append("heartbeats paused by the user")
        else:
            reasons.append(None)
    return reasons
