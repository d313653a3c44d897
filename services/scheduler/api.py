"""Scheduler HTTP routes (/v1, bearer token required)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.scheduler.application import NotFound
from services.scheduler.bootstrap_types import SchedulerContext
from services.scheduler.schedule import CronSpec, ScheduleError, parse_zone
from shared.contracts import Channel
from shared.http import ApiError

UserId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:@-]{1,128}$")]


def _check(fn: Any, value: str) -> str:
    try:
        fn(value)
    except ScheduleError as exc:
        raise ValueError(exc.reason) from None
    return value


class ProfileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    timezone: str = Field(description="IANA time zone, e.g. Europe/Berlin")
    heartbeats_enabled: bool = True

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check(parse_zone, value)


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedule_cron: str = Field(description="5 cron fields, or 6 with a leading seconds field")
    channel: Channel
    job_type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")] = "heartbeat"

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check(CronSpec.parse, value)


def _public_channel(channel: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in channel.items() if k != "secret"}


def build_router(ctx: SchedulerContext) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.put("/users/{user_id}/profile")
    async def put_profile(user_id: UserId, body: ProfileIn) -> dict[str, Any]:
        profile = await ctx.store.call(
            ctx.app.set_profile, user_id, body.timezone, body.heartbeats_enabled
        )
        await ctx.after_write()
        return {
            "user_id": user_id,
            "timezone": profile.timezone,
            "heartbeats_enabled": profile.heartbeats_enabled,
        }

    @router.post("/users/{user_id}/heartbeats", status_code=201)
    async def create_heartbeat(user_id: UserId, body: JobIn) -> dict[str, Any]:
        try:
            job, profile = await ctx.store.call(
                ctx.app.create_job,
                user_id,
                body.job_type,
                body.schedule_cron,
                body.channel.model_dump(),
            )
        except NotFound:
            raise ApiError(
                409,
                "profile_required",
                f"user {user_id} has no profile: PUT /v1/users/{user_id}/profile with a "
                "timezone first",
                field="user_id",
            ) from None
        await ctx.after_write()
        slot = (
            ctx.next_slot(job.id, job.schedule_cron, profile.timezone, job.schedule_version)
            if profile.heartbeats_enabled
            else None
        )
        return {
            "job_id": str(job.id),
            "user_id": user_id,
            "job_type": job.job_type,
            "schedule_cron": job.schedule_cron,
            "timezone": profile.timezone,
            "channel": _public_channel(job.channel),
            "next_fire_at": slot.at.isoformat() if slot else None,
            "next_fire_local": slot.local_iso if slot else None,
            "next_slot_key": slot.key if slot else None,
        }

    @router.get("/users/{user_id}/heartbeats")
    async def list_heartbeats(user_id: UserId) -> dict[str, Any]:
        async with ctx.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT job_id, job_type, schedule_cron, schedule_version, channel, timezone,
                          enabled, next_fire_at, local_time, slot_key, created_at
                   FROM jobs WHERE user_id = $1 AND NOT deleted ORDER BY created_at""",
                user_id,
            )
        return {
            "items": [
                {
                    "job_id": str(r["job_id"]),
                    "job_type": r["job_type"],
                    "schedule_cron": r["schedule_cron"],
                    "schedule_version": r["schedule_version"],
                    "timezone": r["timezone"],
                    "enabled": r["enabled"],
                    "channel": _public_channel(json.loads(r["channel"])),
                    "next_fire_at": r["next_fire_at"].astimezone(UTC).isoformat()
                    if r["next_fire_at"]
                    else None,
                    "next_fire_local": r["local_time"],
                    "next_slot_key": r["slot_key"],
                }
                for r in rows
            ]
        }

    @router.get("/heartbeats/{job_id}")
    async def get_heartbeat(job_id: UUID) -> dict[str, Any]:
        try:
            job = await ctx.store.call(ctx.app.get_job, job_id)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc), field="job_id") from None
        return {
            "job_id": str(job.id),
            "user_id": job.user_id,
            "job_type": job.job_type,
            "schedule_cron": job.schedule_cron,
            "schedule_version": job.schedule_version,
            "enabled": job.enabled,
            "channel": _public_channel(job.channel),
            "created_at": job.created_on.astimezone(UTC).isoformat(),
            "as_of": datetime.now(UTC).isoformat(),
        }

    return router
