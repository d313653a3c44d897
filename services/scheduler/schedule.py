"""When a heartbeat comes due: cron in the user's IANA zone, with DST done right.

Pure domain code (no I/O). The rules (DESIGN.md invariant 3):

* A fixed-time schedule (hour field is a number, list or range) fires once per local
  occurrence. A local time that does not exist (spring-forward gap) fires at the first
  instant after the gap; a local time that happens twice (fall-back overlap) fires at its
  first occurrence only.
* A schedule whose hour field is a wildcard or a step (``*``, ``*/2``, ``1-23/3``)
  follows elapsed real time: in an overlap it fires in both passes, in a gap it simply
  has no slots.

croniter supplies the local wall-clock candidates (naive datetimes); this module maps
each to real instants under those rules.
"""

from __future__ import annotations

import copy
import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import CroniterBadCronError, CroniterBadDateError, croniter

# A zone's offset never jumps by more than this (the largest real jump is 24 h across
# the date line once in history; DST jumps are <= 2 h). Used to order candidates safely.
_MAX_JUMP = timedelta(hours=3)
_LOOKAHEAD_YEARS = 5


class ScheduleError(ValueError):
    """A cron expression or zone that cannot be scheduled, with a reason for the user."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Slot:
    key: str
    at: datetime  # UTC instant it fires
    local: datetime  # aware local time (at, in the user's zone)

    @property
    def local_iso(self) -> str:
        return self.local.isoformat()


def parse_zone(name: str, field: str = "timezone") -> ZoneInfo:
    if not name or name != name.strip() or name.startswith(("+", "-")):
        raise ScheduleError(field, f"'{name}' is not an IANA time zone name")
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, IsADirectoryError):
        raise ScheduleError(field, f"unknown IANA time zone '{name}'") from None
    if name not in _zone_names():
        raise ScheduleError(field, f"unknown IANA time zone '{name}'")
    return zone


_ZONES: set[str] | None = None


def _zone_names() -> set[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = available_timezones()
    return _ZONES


@dataclass(frozen=True)
class CronSpec:
    """A validated cron: 5 fields, or 6 with a leading seconds field."""

    expr: str
    has_seconds: bool
    follows_elapsed_time: bool

    @classmethod
    def parse(cls, expr: str, field: str = "schedule_cron") -> CronSpec:
        text = " ".join(expr.split())
        fields = text.split(" ")
        if len(fields) not in (5, 6):
            raise ScheduleError(
                field,
                f"expected 5 fields (minute hour day month weekday) or 6 with a leading "
                f"seconds field, got {len(fields)}",
            )
        if any(f.upper() in ("H", "L") or "H(" in f.upper() or "#" in f for f in fields):
            raise ScheduleError(
                field, "hash (H), last (L) and nth-weekday (#) fields are not supported"
            )
        has_seconds = len(fields) == 6
        minute_hour_dom_month_dow = fields[1:] if has_seconds else fields
        hour = minute_hour_dom_month_dow[1]
        dom, dow = minute_hour_dom_month_dow[2], minute_hour_dom_month_dow[4]
        if dom not in ("*", "?") and dow not in ("*", "?"):
            # Vixie cron fires when EITHER field matches, which is rarely what is meant.
            raise ScheduleError(
                field,
                "ambiguous: both day-of-month and day-of-week are restricted (cron would fire "
                "when either matches); set one of them to *",
            )
        try:
            croniter(text, datetime(2026, 1, 1), second_at_beginning=has_seconds)
        except (CroniterBadCronError, ValueError, KeyError) as exc:
            raise ScheduleError(field, f"invalid cron expression: {exc}") from None
        spec = cls(text, has_seconds, "*" in hour or "/" in hour)
        # A cron that names an impossible date (e.g. 30 February) never fires.
        try:
            spec._naive_iter(datetime(2026, 1, 1)).__next__()
        except (CroniterBadDateError, StopIteration):
            raise ScheduleError(field, "this cron never fires (no such date)") from None
        return spec

    def _naive_iter(self, start: datetime) -> Iterator[datetime]:
        # A copy of a parsed croniter, moved to ``start``: parsing the expression costs
        # more than finding the next time, and the ticker does this for every slot.
        it = copy.copy(_parsed(self.expr, self.has_seconds))
        it.set_current(start, force=True)
        while True:
            yield it.get_next(datetime)


@lru_cache(maxsize=4096)
def _parsed(expr: str, has_seconds: bool) -> croniter:
    return croniter(
        expr,
        datetime(2000, 1, 1),
        second_at_beginning=has_seconds,
        max_years_between_matches=_LOOKAHEAD_YEARS,
    )


def _is_gap(naive: datetime, zone: ZoneInfo) -> bool:
    aware = naive.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive


def _is_overlap(naive: datetime, zone: ZoneInfo) -> bool:
    return (
        naive.replace(tzinfo=zone, fold=0).utcoffset()
        != naive.replace(tzinfo=zone, fold=1).utcoffset()
    )


def _gap_end(naive: datetime, zone: ZoneInfo) -> datetime:
    """The first real instant after the gap that swallows local time ``naive``."""
    # fold=1 reads the gap time with the offset after the change (an instant before the
    # transition), fold=0 with the offset before it (an instant after). The transition
    # lies between: bisect to the second.
    lo = naive.replace(tzinfo=zone, fold=1).astimezone(UTC)
    hi = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if lo > hi:
        lo, hi = hi, lo
    after = hi.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _margin(zone: ZoneInfo, instant: datetime) -> timedelta:
    """How far wall-clock order may disagree with real-time order near ``instant``:
    zero unless the zone's offset changes within a few hours of it."""
    before = (instant - _MAX_JUMP).astimezone(zone).utcoffset()
    after = (instant + _MAX_JUMP).astimezone(zone).utcoffset()
    return timedelta(0) if before == after == instant.astimezone(zone).utcoffset() else _MAX_JUMP


def _instants(naive: datetime, zone: ZoneInfo, elapsed: bool) -> list[datetime]:
    """The real instants (UTC) at which the local candidate ``naive`` fires."""
    if _is_gap(naive, zone):
        return [] if elapsed else [_gap_end(naive, zone)]
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if elapsed and _is_overlap(naive, zone):
        return [first, naive.replace(tzinfo=zone, fold=1).astimezone(UTC)]
    return [first]


def slot_key(job_id: UUID | str, schedule_version: int, local: datetime) -> str:
    """Names the nominal slot: the same slot whoever computes it, however often."""
    return f"{job_id}:v{schedule_version}:{local.isoformat()}"


def iter_slots(
    spec: CronSpec,
    zone: ZoneInfo,
    after: datetime,
    *,
    job_id: UUID | str,
    schedule_version: int,
) -> Iterator[Slot]:
    """Slots strictly after the instant ``after``, in order, forever."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    after = after.astimezone(UTC)
    # Start a little earlier in wall-clock terms so candidates that map to instants after
    # ``after`` (across an offset change) are not missed; order them with a heap.
    start_naive = after.astimezone(zone).replace(tzinfo=None) - _margin(zone, after)
    heap: list[datetime] = []
    last: datetime | None = None
    try:
        for naive in spec._naive_iter(start_naive):
            for instant in _instants(naive, zone, spec.follows_elapsed_time):
                if instant > after:
                    heapq.heappush(heap, instant)
            approx = naive.replace(tzinfo=zone).astimezone(UTC)
            horizon = approx - _margin(zone, approx)
            while heap and heap[0] <= horizon:
                instant = heapq.heappop(heap)
                if instant == last:
                    continue  # two gap times moved to the same instant fire once
                last = instant
                local = instant.astimezone(zone)
                yield Slot(slot_key(job_id, schedule_version, local), instant, local)
    except CroniterBadDateError:
        pass
    while heap:
        instant = heapq.heappop(heap)
        if instant != last:
            last = instant
            local = instant.astimezone(zone)
            yield Slot(slot_key(job_id, schedule_version, local), instant, local)


def next_slot(
    spec: CronSpec, zone: ZoneInfo, after: datetime, *, job_id: UUID | str, schedule_version: int
) -> Slot | None:
    found = _next_instant(spec, zone, after)
    if found is None:
        return None
    instant, local = found
    return Slot(slot_key(job_id, schedule_version, local), instant, local)


@lru_cache(maxsize=16384)
def _next_instant(
    spec: CronSpec, zone: ZoneInfo, after: datetime
) -> tuple[datetime, datetime] | None:
    """The next firing after ``after`` depends on the schedule, the zone and the instant,
    not on the job: the thousands of jobs of a top-of-minute burst that share a cron and
    a zone compute it once."""
    slot = next(iter_slots(spec, zone, after, job_id="", schedule_version=0), None)
    return (slot.at, slot.local) if slot else None


def upcoming(
    spec: CronSpec,
    zone: ZoneInfo,
    after: datetime,
    count: int,
    *,
    job_id: UUID | str,
    schedule_version: int,
) -> list[Slot]:
    out: list[Slot] = []
    for slot in iter_slots(spec, zone, after, job_id=job_id, schedule_version=schedule_version):
        out.append(slot)
        if len(out) >= count:
            break
    return out


def continue_in_zone(
    spec: CronSpec,
    next_local: datetime,
    zone: ZoneInfo,
    now: datetime,
    *,
    job_id: UUID | str,
    schedule_version: int,
) -> tuple[Slot | None, bool]:
    """The next slot after the user moves to ``zone``, and whether it is a catch-up.

    ``next_local`` is the local wall time of the slot the job was waiting for in its old
    zone. A fixed-time schedule carries on by the wall clock: the next slot is the first
    one in the new zone whose local time is not before ``next_local``, so that day's
    heartbeat is neither repeated (moving west, where it already came) nor lost (moving
    east, where its hour has already passed: it is then due at once, coalesced to the
    latest such slot of the new zone's current local day). A slot of an earlier local day
    is not caught up. A schedule that follows elapsed time simply goes on from ``now``.
    """
    if spec.follows_elapsed_time:
        return next_slot(spec, zone, now, job_id=job_id, schedule_version=schedule_version), False
    wall = next_local.replace(tzinfo=None)
    # Start before the wall time's instant in the new zone (a day covers any offset
    # change) and take the first slot whose wall time is not before it.
    start = wall.replace(tzinfo=zone).astimezone(UTC) - timedelta(days=1)
    today = now.astimezone(zone).date()
    latest_past: Slot | None = None
    for slot in iter_slots(spec, zone, start, job_id=job_id, schedule_version=schedule_version):
        if slot.local.replace(tzinfo=None) < wall:
            continue
        if slot.at > now:
            return (latest_past, True) if latest_past else (slot, False)
        if slot.local.date() == today:
            latest_past = slot
    return (latest_past, True) if latest_past else (None, False)
