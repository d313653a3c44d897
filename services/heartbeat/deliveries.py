"""The deliveries read model: one row per slot outcome, for the deliveries API and the
monitor. A tracked projection of the heartbeat service's own events."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from services.heartbeat.domain import Delivery
from shared.projection import Item, TrackedFollower

DDL = """
CREATE TABLE IF NOT EXISTS deliveries (
    slot_key text PRIMARY KEY,
    job_id uuid NOT NULL,
    user_id text NOT NULL,
    outcome text NOT NULL,
    scheduled_for timestamptz NOT NULL,
    attempts integer NOT NULL,
    error_class text NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries (job_id, scheduled_for);
"""


class DeliveriesProjection(TrackedFollower):
    name = "deliveries"

    async def setup_tables(self, conn: asyncpg.Connection) -> None:
        await conn.execute(DDL)

    async def process(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        rows = [
            (
                e.slot_key,  # type: ignore[attr-defined]
                e.job_id,  # type: ignore[attr-defined]
                e.user_id,  # type: ignore[attr-defined]
                e.outcome,  # type: ignore[attr-defined]
                e.scheduled_for,  # type: ignore[attr-defined]
                e.attempts,  # type: ignore[attr-defined]
                getattr(e, "error_class", ""),
                e.timestamp,
            )
            for _, e in items
            if isinstance(e, Delivery.Sent | Delivery.Failed | Delivery.Skipped)
        ]
        if rows:
            await conn.executemany(
                """INSERT INTO deliveries (slot_key, job_id, user_id, outcome, scheduled_for,
                       attempts, error_class, recorded_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (slot_key) DO NOTHING""",
                rows,
            )
