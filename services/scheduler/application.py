"""Scheduler use cases on an eventsourcing Application."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application

from services.scheduler.domain import JOB_TYPES, HeartbeatJob, MissedSlots, Profile, profile_id
from services.scheduler.schedule import CronSpec, ScheduleError, parse_zone
from shared.eventstore import save_each


class NotFound(LookupError):
    pass


class SchedulerApplication(Application[UUID]):
    name = "scheduler"

    def set_profile(
        self,
        user_id: str,
        timezone: str,
        heartbeats_enabled: bool,
        quiet_hours: dict[str, str] | None = None,
    ) -> Profile:
        parse_zone(timezone)
        try:
            profile: Profile = self.repository.get(profile_id(user_id))
        except AggregateNotFoundError:
            profile = Profile(user_id, timezone, heartbeats_enabled, quiet_hours)
        else:
            if not profile.change(timezone, heartbeats_enabled, quiet_hours):
                return profile  # nothing changed: record no event
        self.save(profile)
        return profile

    def set_heartbeats_enabled(self, user_id: str, enabled: bool) -> Profile:
        """The chat's /heartbeats toggle: pause or resume every job of the user."""
        profile = self.get_profile(user_id)
        if profile.change(profile.timezone, enabled, profile.quiet_hours):
            self.save(profile)
        return profile

    def get_profile(self, user_id: str) -> Profile:
        try:
            profile: Profile = self.repository.get(profile_id(user_id))
        except AggregateNotFoundError:
            raise NotFound(f"user {user_id} has no profile") from None
        return profile

    def create_job(
        self, user_id: str, job_type: str, schedule_cron: str, channel: dict[str, Any]
    ) -> tuple[HeartbeatJob, Profile]:
        if job_type not in JOB_TYPES:
            raise ScheduleError("job_type", f"unknown job type '{job_type}'")
        profile = self.get_profile(user_id)
        spec = CronSpec.parse(schedule_cron)
        job = HeartbeatJob(user_id, job_type, spec.expr, channel)
        self.save(job)
        return job, profile

    def update_job(
        self,
        job_id: UUID,
        *,
        schedule_cron: str | None = None,
        channel: dict[str, Any] | None = None,
        enabled: bool | None = None,
    ) -> HeartbeatJob:
        job = self.get_job(job_id)
        if schedule_cron is not None:
            job.change_schedule(CronSpec.parse(schedule_cron).expr)
        if channel is not None:
            job.change_channel(channel)
        if enabled is not None:
            job.set_enabled(enabled)
        self.save(job)
        return job

    def delete_job(self, job_id: UUID) -> HeartbeatJob:
        job = self.get_job(job_id)
        job.delete()
        self.save(job)
        return job

    def get_job(self, job_id: UUID) -> HeartbeatJob:
        try:
            job: HeartbeatJob = self.repository.get(job_id)
        except AggregateNotFoundError:
            raise NotFound(f"no heartbeat job {job_id}") from None
        return job

    def record_missed(self, records: list[MissedSlots]) -> int:
        """Save missed-slot records; a record saved before (same id) is skipped."""
        return sum(save_each(self, list(records))) if records else 0
