"""Scheduler use cases on an eventsourcing Application."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application

from services.scheduler.domain import HeartbeatJob, Profile, profile_id
from services.scheduler.schedule import CronSpec, parse_zone
from shared.eventstore import ServiceInstance


class NotFound(LookupError):
    pass


class SchedulerApplication(Application[UUID]):
    name = "scheduler"

    def set_profile(self, user_id: str, timezone: str, heartbeats_enabled: bool) -> Profile:
        parse_zone(timezone)
        try:
            profile: Profile = self.repository.get(profile_id(user_id))
        except AggregateNotFoundError:
            profile = Profile(user_id, timezone, heartbeats_enabled)
        else:
            if (profile.timezone, profile.heartbeats_enabled) == (timezone, heartbeats_enabled):
                return profile  # nothing changed: record no event
            profile.change(timezone, heartbeats_enabled)
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
        profile = self.get_profile(user_id)
        spec = CronSpec.parse(schedule_cron)
        job = HeartbeatJob(user_id, job_type, spec.expr, channel)
        self.save(job)
        return job, profile

    def get_job(self, job_id: UUID) -> HeartbeatJob:
        try:
            job: HeartbeatJob = self.repository.get(job_id)
        except AggregateNotFoundError:
            raise NotFound(f"no heartbeat job {job_id}") from None
        return job

    def record_start(self, instance: ServiceInstance) -> None:
        self.save(instance)
