"""Scheduler HTTP routes (/v1, bearer token required)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from services.scheduler.application import NotFound
from services.scheduler.bootstrap_types import SchedulerContext
from services.scheduler.domain import JOB_TYPES, HeartbeatJob, JobDeleted
from services.scheduler.schedule import CronSpec, ScheduleError, parse_zone, upcoming
from shared.contracts import Channel, QuietHours
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
    quiet_hours: QuietHours | None = None

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check(parse_zone, value)


def _cron(value: str) -> str:
    return _check(CronSpec.parse, value)


class JobIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedule_cron: str = Field(description="5 cron fields, or 6 with a leading seconds field")
    channel: Channel
    job_type: str = "heartbeat"

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _cron(value)

    @field_validator("job_type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in JOB_TYPES:
            raise ValueError(f"unknown job type '{value}' (known: {', '.join(sorted(JOB_TYPES))})")
        return value


class JobPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schedule_cron: str | None = None
    channel: Channel | None = None
    enabled: bool | None = None

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _cron(value)


def _public_channel(channel: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in channel.items() if k != "secret"}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def _job_view(job: HeartbeatJob) -> dict[str, Any]:
    return {
        "job_id": str(job.id),
        "user_id": job.user_id,
        "job_type": job.job_type,
        "schedule_cron": job.schedule_cron,
        "schedule_version": job.schedule_version,
        "enabled": job.enabled,
        "deleted": job.deleted,
        "channel": _public_channel(job.channel),
        "created_at": _iso(job.created_on),
    }


def build_router(ctx: SchedulerContext) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def _profile_view(profile: Any) -> dict[str, Any]:
        return {
            "user_id": profile.user_id,
            "timezone": profile.timezone,
            "heartbeats_enabled": profile.heartbeats_enabled,
            "quiet_hours": profile.quiet_hours,
        }

    async def _job(job_id: UUID) -> HeartbeatJob:
        try:
            job: HeartbeatJob = await ctx.store.call(ctx.app.get_job, job_id)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc), field="job_id") from None
        return job

    @router.put("/users/{user_id}/profile")
    async def put_profile(user_id: UserId, body: ProfileIn) -> dict[str, Any]:
        profile = await ctx.store.call(
            ctx.app.set_profile,
            user_id,
            body.timezone,
            body.heartbeats_enabled,
            body.quiet_hours.model_dump() if body.quiet_hours else None,
        )
        await ctx.after_write()
        return _profile_view(profile)

    @router.get("/users/{user_id}/profile")
    async def get_profile(user_id: UserId) -> dict[str, Any]:
        try:
            profile = await ctx.store.call(ctx.app.get_profile, user_id)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc), field="user_id") from None
        return _profile_view(profile)

    async def _toggle(user_id: str, enabled: bool) -> dict[str, Any]:
        try:
            profile = await ctx.store.call(ctx.app.set_heartbeats_enabled, user_id, enabled)
        except NotFound as exc:
            raise ApiError(404, "not_found", str(exc), field="user_id") from None
        await ctx.after_write()
        return _profile_view(profile)

    @router.post("/users/{user_id}/heartbeats:pause")
    async def pause(user_id: UserId) -> dict[str, Any]:
        return await _toggle(user_id, False)

    @router.post("/users/{user_id}/heartbeats:resume")
    async def resume(user_id: UserId) -> dict[str, Any]:
        return await _toggle(user_id, True)

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
            **_job_view(job),
            "timezone": profile.timezone,
            "next_fire_at": _iso(slot.at) if slot else None,
            "next_fire_local": slot.local_iso if slot else None,
            "next_slot_key": slot.key if slot else None,
        }

    @router.get("/users/{user_id}/heartbeats")
    async def list_heartbeats(user_id: UserId) -> dict[str, Any]:
        async with ctx.pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT job_id, job_type, schedule_cron, schedule_version, channel, timezone,
                          enabled, heartbeats_enabled, slot_at, local_time, slot_key
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
                    "paused": not r["heartbeats_enabled"],
                    "channel": _public_channel(json.loads(r["channel"])),
                    "next_fire_at": _iso(r["slot_at"]),
                    "next_fire_local": r["local_time"],
                    "next_slot_key": r["slot_key"],
                }
                for r in rows
            ]
        }

    @router.get("/heartbeats/{job_id}")
    async def get_heartbeat(job_id: UUID) -> dict[str, Any]:
        return _job_view(await _job(job_id))

    @router.patch("/heartbeats/{job_id}")
    async def patch_heartbeat(job_id: UUID, body: JobPatch) -> dict[str, Any]:
        await _job(job_id)
        try:
            job = await ctx.store.call(
                ctx.app.update_job,
                job_id,
                schedule_cron=body.schedule_cron,
                channel=body.channel.model_dump() if body.channel else None,
                enabled=body.enabled,
            )
        except JobDeleted as exc:
            raise ApiError(409, "deleted", str(exc), field="job_id") from None
        await ctx.after_write()
        return _job_view(job)

    @router.delete("/heartbeats/{job_id}", status_code=204)
    async def delete_heartbeat(job_id: UUID) -> Response:
        await _job(job_id)
        await ctx.store.call(ctx.app.delete_job, job_id)
        await ctx.after_write()
        return Response(status_code=204)

    @router.get("/heartbeats/{job_id}/upcoming")
    async def upcoming_slots(
        job_id: UUID,
        from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
        count: Annotated[int, Query(ge=1, le=1000)] = 10,
    ) -> dict[str, Any]:
        job = await _job(job_id)
        if job.deleted:
            raise ApiError(409, "deleted", f"heartbeat job {job_id} was deleted", field="job_id")
        profile = await ctx.store.call(ctx.app.get_profile, job.user_id)
        slots = upcoming(
            CronSpec.parse(job.schedule_cron),
            parse_zone(profile.timezone),
            from_ or datetime.now(UTC),
            count,
            job_id=job.id,
            schedule_version=job.schedule_version,
        )
        return {
            "job_id": str(job.id),
            "timezone": profile.timezone,
            "schedule_cron": job.schedule_cron,
            "items": [{"slot_key": s.key, "at": _iso(s.at), "local": s.local_iso} for s in slots],
        }

    return router
