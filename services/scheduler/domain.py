"""Scheduler aggregates. Events are facts carrying the data of the decision."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

_NS = uuid5(NAMESPACE_URL, "https://liteclaw.ai/scheduler")

# The job types this system knows. A scheduler instance emits the types named by
# HEARTBEAT_JOB_TYPE; naming one outside this set is a configuration error.
JOB_TYPES = frozenset({"heartbeat", "checkin"})


def profile_id(user_id: str) -> UUID:
    return uuid5(_NS, f"profile:{user_id}")


@dataclass(frozen=True)
class QuietHours:
    """Local wall-clock window in which heartbeats are skipped; may wrap midnight."""

    start: time
    end: time

    def contains(self, local: time) -> bool:
        if self.start == self.end:
            return False
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def as_dict(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}

    @classmethod
    def from_dict(cls, data: dict[str, str] | None) -> QuietHours | None:
        if not data:
            return None
        return cls(time.fromisoformat(data["start"]), time.fromisoformat(data["end"]))


class Profile(Aggregate):
    """A user's timezone, the chat's /heartbeats toggle and optional quiet hours."""

    @staticmethod
    def create_id(user_id: str, **_: object) -> UUID:
        # One profile per user, found by user id alone.
        return profile_id(user_id)

    class Registered(Aggregate.Created):
        user_id: str
        timezone: str
        heartbeats_enabled: bool
        quiet_hours: dict[str, str] | None

    class Changed(Aggregate.Event):
        # Carries user_id too, so projections and the relay need not look the profile up.
        user_id: str
        timezone: str
        heartbeats_enabled: bool
        quiet_hours: dict[str, str] | None

        def apply(self, aggregate: Aggregate) -> None:
            aggregate.timezone = self.timezone  # type: ignore[attr-defined]
            aggregate.heartbeats_enabled = self.heartbeats_enabled  # type: ignore[attr-defined]
            aggregate.quiet_hours = self.quiet_hours  # type: ignore[attr-defined]

    @event(Registered)
    def __init__(
        self,
        user_id: str,
        timezone: str,
        heartbeats_enabled: bool,
        quiet_hours: dict[str, str] | None,
    ) -> None:
        self.user_id = user_id
        self.timezone = timezone
        self.heartbeats_enabled = heartbeats_enabled
        self.quiet_hours = quiet_hours

    def change(
        self, timezone: str, heartbeats_enabled: bool, quiet_hours: dict[str, str] | None
    ) -> bool:
        """Record a change; returns False (and records nothing) when nothing differs."""
        if (self.timezone, self.heartbeats_enabled, self.quiet_hours) == (
            timezone,
            heartbeats_enabled,
            quiet_hours,
        ):
            return False
        self.trigger_event(
            self.Changed,
            user_id=self.user_id,
            timezone=timezone,
            heartbeats_enabled=heartbeats_enabled,
            quiet_hours=quiet_hours,
        )
        return True


class JobDeleted(Exception):
    pass


class HeartbeatJob(Aggregate):
    """One recurring heartbeat: a cron in the owner's zone and where to deliver it."""

    class Created(Aggregate.Created):
        user_id: str
        job_type: str
        schedule_cron: str
        channel: dict[str, Any]

    # Every event names the owner, so projections can index by user without a lookup.
    class ScheduleChanged(Aggregate.Event):
        user_id: str
        schedule_cron: str
        schedule_version: int

    class ChannelChanged(Aggregate.Event):
        user_id: str
        channel: dict[str, Any]

    class Disabled(Aggregate.Event):
        user_id: str

    class Enabled(Aggregate.Event):
        user_id: str

    class Deleted(Aggregate.Event):
        user_id: str

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

    def _check_live(self) -> None:
        if self.deleted:
            raise JobDeleted(f"heartbeat job {self.id} was deleted")

    def change_schedule(self, schedule_cron: str) -> None:
        self._check_live()
        if schedule_cron != self.schedule_cron:
            self._schedule_changed(self.user_id, schedule_cron, self.schedule_version + 1)

    @event(ScheduleChanged)
    def _schedule_changed(self, user_id: str, schedule_cron: str, schedule_version: int) -> None:
        self.schedule_cron = schedule_cron
        self.schedule_version = schedule_version

    def change_channel(self, channel: dict[str, Any]) -> None:
        self._check_live()
        if channel != self.channel:
            self._channel_changed(self.user_id, channel)

    @event(ChannelChanged)
    def _channel_changed(self, user_id: str, channel: dict[str, Any]) -> None:
        self.channel = channel

    def set_enabled(self, enabled: bool) -> None:
        self._check_live()
        if enabled and not self.enabled:
            self._enabled(self.user_id)
        elif not enabled and self.enabled:
            self._disabled(self.user_id)

    @event(Enabled)
    def _enabled(self, user_id: str) -> None:
        self.enabled = True

    @event(Disabled)
    def _disabled(self, user_id: str) -> None:
        self.enabled = False

    def delete(self) -> None:
        if not self.deleted:
            self._deleted(self.user_id)

    @event(Deleted)
    def _deleted(self, user_id: str) -> None:
        self.deleted = True


def missed_id(job_id: UUID, first_slot_key: str) -> UUID:
    return uuid5(_NS, f"missed:{job_id}:{first_slot_key}")


class MissedSlots(Aggregate):
    """Slots of one job that came due while no scheduler ran and are older than the
    misfire grace window: one record per job and outage, never one per slot."""

    class Recorded(Aggregate.Created):
        job_id: UUID
        user_id: str
        count: int
        first_slot_key: str
        last_slot_key: str
        first_scheduled_for: datetime
        last_scheduled_for: datetime
        count_is_lower_bound: bool

    @event(Recorded)
    def __init__(
        self,
        job_id: UUID,
        user_id: str,
        count: int,
        first_slot_key: str,
        last_slot_key: str,
        first_scheduled_for: datetime,
        last_scheduled_for: datetime,
        count_is_lower_bound: bool,
    ) -> None:
        self.job_id = job_id
        self.user_id = user_id
        self.count = count
        self.first_slot_key = first_slot_key
        self.last_slot_key = last_slot_key
        self.first_scheduled_for = first_scheduled_for
        self.last_scheduled_for = last_scheduled_for
        self.count_is_lower_bound = count_is_lower_bound

    @classmethod
    def record(cls, job_id: UUID, user_id: str, slots: list[Any], capped: bool) -> MissedSlots:
        first, last = slots[0], slots[-1]
        # asyncpg hands out its own UUID subclass, which the event store's
        # transcoder does not know: normalise at the aggregate boundary.
        job_id = UUID(str(job_id))
        return cls._create(
            cls.Recorded,
            id=missed_id(job_id, first.key),
            job_id=job_id,
            user_id=user_id,
            count=len(slots),
            first_slot_key=first.key,
            last_slot_key=last.key,
            first_scheduled_for=first.at,
            last_scheduled_for=last.at,
            count_is_lower_bound=capped,
        )
