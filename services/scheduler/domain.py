"""Scheduler aggregates. Events are facts carrying the data of the decision."""

from __future__ import annotations

from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NS = uuid5(NAMESPACE_URL, "https://liteclaw.ai/scheduler")


def profile_id(user_id: str) -> UUID:
    return uuid5(_NS, f"profile:{user_id}")


class Profile(Aggregate):
    """A user's timezone and the chat's /heartbeats toggle."""

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return profile_id(user_id)

    class Registered(Aggregate.Created):
        user_id: str
        timezone: str
        heartbeats_enabled: bool

    class Changed(Aggregate.Event):
        # Carries user_id too, so projections and the relay need not look the profile up.
        user_id: str
        timezone: str
        heartbeats_enabled: bool

        def apply(self, aggregate: Aggregate) -> None:
            aggregate.timezone = self.timezone  # type: ignore[attr-defined]
            aggregate.heartbeats_enabled = self.heartbeats_enabled  # type: ignore[attr-defined]

    @event(Registered)
    def __init__(self, user_id: str, timezone: str, heartbeats_enabled: bool) -> None:
        self.user_id = user_id
        self.timezone = timezone
        self.heartbeats_enabled = heartbeats_enabled

    def change(self, timezone: str, heartbeats_enabled: bool) -> None:
        self.trigger_event(
            self.Changed,
            user_id=self.user_id,
            timezone=timezone,
            heartbeats_enabled=heartbeats_enabled,
        )


class HeartbeatJob(Aggregate):
    """One recurring heartbeat: a cron in the owner's zone and where to deliver it."""

    class Created(Aggregate.Created):
        user_id: str
        job_type: str
        schedule_cron: str
        channel: dict[str, Any]

    @event(Created)
    def __init__(
        self, user_id: str, job_type: str, schedule_cron: str, channel: dict[str, Any]
    ) -> None:
        self.user_id = user_id
        self.job_type = job_type
        self.schedule_cron = schedule_cron
        self.channel = channel
        self.enabled = True
        self.deleted = False
        # Bumped by every schedule change, so slot keys of the old schedule never collide
        # with the new one's.
        self.schedule_version = 1
