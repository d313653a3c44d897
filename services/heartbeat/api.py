"""Heartbeat HTTP routes (/v1, bearer token required)."""

from __future__ import annotations

from datetime import UTC
from typing import Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Query


def build_router(pool: Any) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/heartbeats/{job_id}/deliveries")
    async def deliveries(job_id: UUID, limit: int = Query(100, ge=1, le=1000)) -> dict[str, Any]:
        db: asyncpg.Pool = pool()
        async with db.acquire() as conn:
            rows = await conn.fetch(
                """SELECT slot_key, outcome, scheduled_for, attempts, error_class, recorded_at
                   FROM deliveries WHERE job_id = $1 ORDER BY scheduled_for DESC LIMIT $2""",
                job_id,
                limit,
            )
        return {
            "items": [
                {
                    "slot_key": r["slot_key"],
                    "outcome": r["outcome"],
                    "scheduled_for": r["scheduled_for"].astimezone(UTC).isoformat(),
                    "attempts": r["attempts"],
                    "error_class": r["error_class"] or None,
                    "recorded_at": r["recorded_at"].astimezone(UTC).isoformat(),
                }
                for r in rows
            ]
        }

    return router
