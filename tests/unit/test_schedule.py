"""Pure tests of services/scheduler/schedule.py: cron parsing, zones and DST.

Every expected instant below is derived from the zone's real UTC offsets:

* Europe/London: GMT (+00:00) / BST (+01:00); 2026 changes at 01:00 UTC on 29 March
  (01:00 GMT -> 02:00 BST) and 25 October (02:00 BST -> 01:00 GMT).
* America/New_York: EST (-05:00) / EDT (-04:00); 2026 changes on 8 March at 07:00 UTC
  (02:00 EST -> 03:00 EDT) and 1 November at 06:00 UTC (02:00 EDT -> 01:00 EST).
* Australia/Lord_Howe: +10:30 standard / +11:00 summer (a 30-minute shift); 2026 changes
  on 5 April (02:00 +11:00 -> 01:30 +10:30, at 15:00 UTC on 4 April) and 4 October
  (02:00 +10:30 -> 02:30 +11:00, at 15:30 UTC on 3 October).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise
from uuid import UUID

import pytest
from croniter import croniter

from services.scheduler.schedule import (
    CronSpec,
    ScheduleError,
    Slot,
    continue_in_zone,
    iter_slots,
    next_slot,
    parse_zone,
    slot_key,
    upcoming,
)

JOB = UUID("12345678-1234-5678-1234-567812345678")
VERSION = 7


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def offset(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


def slots(cron: str, zone: str, after: datetime, count: int, version: int = VERSION) -> list[Slot]:
    return upcoming(
        CronSpec.parse(cron), parse_zone(zone), after, count, job_id=JOB, schedule_version=version
    )


def on_local_date(found: list[Slot], year: int, month: int, day: int) -> list[Slot]:
    return [s for s in found if s.local.date() == datetime(year, month, day).date()]


# --- parsing ---------------------------------------------------------------------------


def test_five_field_cron() -> None:
    spec = CronSpec.parse("30 9 * * 1-5")
    assert not spec.has_seconds
    assert not spec.follows_elapsed_time
    # 2026-01-02 is a Friday, so the next weekday 09:30 after it is Monday 5 January.
    found = slots("30 9 * * 1-5", "UTC", utc(2026, 1, 2, 10, 0), 2)
    assert [s.at for s in found] == [utc(2026, 1, 5, 9, 30), utc(2026, 1, 6, 9, 30)]


def test_six_field_cron_has_leading_seconds() -> None:
    spec = CronSpec.parse("*/20 30 9 * * *")
    assert spec.has_seconds
    assert not spec.follows_elapsed_time  # hour field is the third field, "9"
    found = slots("*/20 30 9 * * *", "UTC", utc(2026, 1, 1), 4)
    assert [s.at for s in found] == [
        utc(2026, 1, 1, 9, 30, 0),
        utc(2026, 1, 1, 9, 30, 20),
        utc(2026, 1, 1, 9, 30, 40),
        utc(2026, 1, 2, 9, 30, 0),
    ]


def test_extra_whitespace_is_normalised() -> None:
    assert CronSpec.parse("  0   9 *  * * ").expr == "0 9 * * *"


@pytest.mark.parametrize(
    ("cron", "elapsed"),
    [
        ("0 9 * * *", False),
        ("0 1,13 * * *", False),
        ("0 9-17 * * *", False),
        ("0 * * * *", True),
        ("0 */2 * * *", True),
        ("0 1-23/3 * * *", True),
        ("0 0 * * * *", True),  # 6 fields: hour is "*"
    ],
)
def test_hour_field_decides_the_dst_rule(cron: str, elapsed: bool) -> None:
    assert CronSpec.parse(cron).follows_elapsed_time is elapsed


@pytest.mark.parametrize(
    "cron",
    [
        "",
        "* * * *",  # 4 fields
        "* * * * * * *",  # 7 fields
        "60 * * * *",  # minute out of range
        "0 24 * * *",  # hour out of range
        "0 0 32 * *",  # day out of range
        "0 0 0 * *",  # day 0
        "0 0 * 13 *",  # month out of range
        "60 0 0 * * *",  # seconds out of range (6 fields)
        "a b c d e",
        "0 0 30 2 *",  # 30 February never happens
        "0 0 31 4 *",  # 31 April never happens
        "0 0 L * *",
        "H 0 * * *",
        "0 0 * * 1#2",
    ],
)
def test_invalid_cron_is_rejected_naming_the_field(cron: str) -> None:
    with pytest.raises(ScheduleError) as info:
        CronSpec.parse(cron)
    assert info.value.field == "schedule_cron"
    assert info.value.reason
    assert str(info.value).startswith("schedule_cron: ")


def test_never_firing_cron_says_so() -> None:
    with pytest.raises(ScheduleError, match="never fires"):
        CronSpec.parse("0 0 30 2 *")


def test_wrong_field_count_says_how_many() -> None:
    with pytest.raises(ScheduleError, match="got 4"):
        CronSpec.parse("0 0 * *")


def test_29_february_is_valid_and_fires_in_the_leap_year() -> None:
    found = slots("0 12 29 2 *", "UTC", utc(2026, 1, 1), 2)
    assert [s.at for s in found] == [utc(2028, 2, 29, 12), utc(2032, 2, 29, 12)]


# --- zones -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Olympus_Mons",
        "+02:00",
        "-05:00",
        "+0200",
        "UTC+2",
        "GMT+2:00",
        "",
        " Europe/London",
        "Europe/London ",
        "Europe",
        "europe/london",
        "../../etc/passwd",
        "/etc/localtime",
    ],
)
def test_unknown_zone_or_offset_is_rejected(zone: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_zone(zone)
    assert info.value.field == "timezone"
    assert info.value.reason


def test_zone_error_can_name_another_field() -> None:
    with pytest.raises(ScheduleError) as info:
        parse_zone("+02:00", field="profile.timezone")
    assert info.value.field == "profile.timezone"


@pytest.mark.parametrize("zone", ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata"])
def test_known_zones_are_accepted(zone: str) -> None:
    assert str(parse_zone(zone)) == zone


# --- DST: fixed-time schedules -----------------------------------------------------------


def test_london_fall_back_fires_once_at_the_first_occurrence() -> None:
    # 01:30 happens twice on 25 October: 01:30 BST (00:30 UTC) and 01:30 GMT (01:30 UTC).
    found = slots("30 1 * * *", "Europe/London", utc(2026, 10, 24, 12), 3)
    assert [s.at for s in found] == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 26, 1, 30),
        utc(2026, 10, 27, 1, 30),
    ]
    assert found[0].local.isoformat() == "2026-10-25T01:30:00+01:00"
    assert len(on_local_date(found, 2026, 10, 25)) == 1


def test_croniter_alone_would_fire_twice_on_london_fall_back() -> None:
    # The reason schedule.py exists: naive use of croniter with an aware start repeats.
    from zoneinfo import ZoneInfo

    it = croniter("30 1 * * *", datetime(2026, 10, 24, 12, tzinfo=ZoneInfo("Europe/London")))
    raw = [it.get_next(datetime).astimezone(UTC) for _ in range(3)]
    assert raw[:2] == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30)]


@pytest.mark.parametrize(
    "after",
    [
        utc(2026, 10, 25, 0, 30),  # exactly the first occurrence (strictly after)
        utc(2026, 10, 25, 0, 45),  # between the two occurrences (01:45 BST)
        utc(2026, 10, 25, 1, 15),  # in the second pass of the hour (01:15 GMT)
        utc(2026, 10, 25, 1, 29, 59),  # just before the second occurrence
    ],
)
def test_london_fall_back_second_occurrence_never_fires(after: datetime) -> None:
    nxt = next_slot(
        CronSpec.parse("30 1 * * *"),
        parse_zone("Europe/London"),
        after,
        job_id=JOB,
        schedule_version=VERSION,
    )
    assert nxt is not None
    assert nxt.at == utc(2026, 10, 26, 1, 30)


def test_london_spring_forward_fires_once_at_the_end_of_the_gap() -> None:
    # 01:30 does not exist on 29 March: fire at 02:00 BST = 01:00 UTC.
    found = slots("30 1 * * *", "Europe/London", utc(2026, 3, 28, 12), 3)
    assert [s.at for s in found] == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 30, 0, 30),
        utc(2026, 3, 31, 0, 30),
    ]
    assert found[0].local == datetime(2026, 3, 29, 2, 0, tzinfo=offset(1))
    assert found[0].local.utcoffset() == timedelta(hours=1)
    assert len(on_local_date(found, 2026, 3, 29)) == 1


def test_new_york_spring_forward_fires_at_three_edt() -> None:
    found = slots("30 2 * * *", "America/New_York", utc(2026, 3, 7, 12), 3)
    assert found[0].at == utc(2026, 3, 8, 7, 0)
    assert found[0].local.isoformat() == "2026-03-08T03:00:00-04:00"
    assert [s.at for s in found[1:]] == [utc(2026, 3, 9, 6, 30), utc(2026, 3, 10, 6, 30)]
    assert len(on_local_date(found, 2026, 3, 8)) == 1


def test_new_york_fall_back_fires_once() -> None:
    found = slots("30 1 * * *", "America/New_York", utc(2026, 10, 31, 12), 3)
    assert [s.at for s in found] == [
        utc(2026, 11, 1, 5, 30),  # 01:30 EDT, the first occurrence
        utc(2026, 11, 2, 6, 30),  # 01:30 EST
        utc(2026, 11, 3, 6, 30),
    ]
    assert found[0].local.isoformat() == "2026-11-01T01:30:00-04:00"
    assert len(on_local_date(found, 2026, 11, 1)) == 1


def test_lord_howe_spring_forward_half_hour_gap() -> None:
    # 02:00 +10:30 -> 02:30 +11:00: 02:15 does not exist, fire at 02:30 +11:00.
    found = slots("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 3), 3)
    assert found[0].at == utc(2026, 10, 3, 15, 30)
    assert found[0].local == datetime(2026, 10, 4, 2, 30, tzinfo=offset(11))
    assert found[0].local.isoformat() == "2026-10-04T02:30:00+11:00"
    assert found[1].at == utc(2026, 10, 4, 15, 15)  # 02:15 +11:00 the next day
    assert len(on_local_date(found, 2026, 10, 4)) == 1


def test_lord_howe_fall_back_half_hour_overlap_fires_once() -> None:
    # 02:00 +11:00 -> 01:30 +10:30: 01:45 happens at 14:45 UTC and again at 15:15 UTC.
    found = slots("45 1 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 12), 3)
    assert [s.at for s in found] == [
        utc(2026, 4, 4, 14, 45),  # 01:45 +11:00 on 5 April
        utc(2026, 4, 5, 15, 15),  # 01:45 +10:30 on 6 April
        utc(2026, 4, 6, 15, 15),
    ]
    assert found[0].local.isoformat() == "2026-04-05T01:45:00+11:00"
    assert len(on_local_date(found, 2026, 4, 5)) == 1


# --- DST: schedules that follow elapsed time ------------------------------------------


def test_wildcard_hour_fires_in_both_passes_of_the_overlap() -> None:
    found = slots("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 4, 0), 8)
    assert [s.local.isoformat() for s in found] == [
        "2026-11-01T00:30:00-04:00",
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T02:30:00-05:00",
        "2026-11-01T03:00:00-05:00",
    ]
    assert [s.at for s in found] == [
        utc(2026, 11, 1, 4, 30) + timedelta(minutes=30 * i) for i in range(8)
    ]
    # Both passes are distinct slots.
    assert len({s.key for s in found}) == 8


def test_wildcard_hour_starting_inside_the_overlap() -> None:
    # After 01:45 EDT (05:45 UTC): the next slot is 01:00 EST, one real 15 minutes later.
    found = slots("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 5, 45), 3)
    assert [s.at for s in found] == [
        utc(2026, 11, 1, 6, 0),
        utc(2026, 11, 1, 6, 30),
        utc(2026, 11, 1, 7, 0),
    ]
    assert found[0].local.isoformat() == "2026-11-01T01:00:00-05:00"


def test_wildcard_hour_skips_the_gap() -> None:
    found = slots("*/30 * * * *", "America/New_York", utc(2026, 3, 8, 5, 0), 8)
    assert [s.local.isoformat() for s in found] == [
        "2026-03-08T00:30:00-05:00",
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T01:30:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T03:30:00-04:00",
        "2026-03-08T04:00:00-04:00",
        "2026-03-08T04:30:00-04:00",
        "2026-03-08T05:00:00-04:00",
    ]
    gaps = {b.at - a.at for a, b in pairwise(found)}
    assert gaps == {timedelta(minutes=30)}
    assert not any(s.local.hour == 2 for s in found)


# --- keys and order ---------------------------------------------------------------------


def test_slot_key_is_deterministic_and_contains_the_version() -> None:
    local = datetime(2026, 10, 25, 1, 30, tzinfo=offset(1))
    key = slot_key(JOB, 3, local)
    assert key == slot_key(str(JOB), 3, local)
    assert str(JOB) in key
    assert "v3" in key
    assert key != slot_key(JOB, 4, local)


def test_slots_carry_the_schedule_version() -> None:
    v1 = slots("30 1 * * *", "Europe/London", utc(2026, 10, 24, 12), 3, version=1)
    v2 = slots("30 1 * * *", "Europe/London", utc(2026, 10, 24, 12), 3, version=2)
    assert [s.at for s in v1] == [s.at for s in v2]
    for a, b in zip(v1, v2, strict=True):
        assert str(JOB) in a.key and ":v1:" in a.key
        assert ":v2:" in b.key
        assert a.key != b.key


@pytest.mark.parametrize(
    ("cron", "zone", "start"),
    [
        ("30 1 * * *", "Europe/London", utc(2026, 10, 20)),
        ("30 1 * * *", "Europe/London", utc(2026, 3, 25)),
        ("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 3)),
        ("*/30 * * * *", "America/New_York", utc(2026, 3, 8, 4)),
        ("45 1 * * *", "Australia/Lord_Howe", utc(2026, 4, 1)),
        ("15 2 * * *", "Australia/Lord_Howe", utc(2026, 10, 1)),
    ],
)
def test_keys_do_not_depend_on_the_after_instant(cron: str, zone: str, start: datetime) -> None:
    """The same slot gets the same key whether reached from far back, or from just before
    it (as the ticker does after firing the previous one)."""
    reference = slots(cron, zone, start, 12)
    # Again, and from a different (but earlier) instant: same slots, same keys.
    assert slots(cron, zone, start, 12) == reference
    spec, tz = CronSpec.parse(cron), parse_zone(zone)
    earlier: list[Slot] = []
    for slot in iter_slots(
        spec, tz, start - timedelta(days=1, minutes=7), job_id=JOB, schedule_version=VERSION
    ):
        if slot.at > reference[-1].at:
            break
        earlier.append(slot)
    assert [s for s in earlier if s.at > start] == reference
    # Step through slot by slot, each from the previous instant and from just before it.
    for prev, slot in zip([None, *reference], reference, strict=False):
        for after in filter(None, [prev.at if prev else None, slot.at - timedelta(seconds=1)]):
            got = next_slot(spec, tz, after, job_id=JOB, schedule_version=VERSION)
            assert got == slot, (after, got, slot)
    # Keys are unique.
    assert len({s.key for s in reference}) == len(reference)


@pytest.mark.parametrize(
    ("cron", "zone", "start"),
    [
        ("30 1 * * *", "Europe/London", utc(2026, 3, 1)),
        ("30 1 * * *", "Europe/London", utc(2026, 10, 1)),
        ("*/30 * * * *", "America/New_York", utc(2026, 11, 1, 2)),
        ("*/30 * * * *", "America/New_York", utc(2026, 3, 8, 2)),
        ("*/15 0-3 * * *", "Australia/Lord_Howe", utc(2026, 4, 4, 12)),
        ("*/15 * * * *", "Australia/Lord_Howe", utc(2026, 10, 3, 12)),
        ("0,30 1,2 * * *", "Europe/London", utc(2026, 3, 28, 12)),
        ("0 0 * * * *", "Europe/London", utc(2026, 10, 24, 20)),
    ],
)
def test_upcoming_is_strictly_increasing_and_after_the_start(
    cron: str, zone: str, start: datetime
) -> None:
    found = slots(cron, zone, start, 200)
    assert len(found) == 200
    assert found[0].at > start
    assert all(a.at < b.at for a, b in pairwise(found))
    for s in found:
        assert s.at.utcoffset() == timedelta(0)
        # The same instant (compare in UTC: PEP 495 makes an ambiguous local time unequal
        # to every instant in another zone).
        assert s.local.astimezone(UTC) == s.at
        assert s.local.tzinfo is not None and str(s.local.tzinfo) == zone


def test_gap_times_moved_to_the_same_instant_fire_once() -> None:
    # 01:00 and 01:30 on 29 March (London) are both swallowed by the gap, and 02:00
    # exists: all three are 01:00 UTC, which fires once.
    found = slots("0,30 1,2 * * *", "Europe/London", utc(2026, 3, 28, 23), 4)
    assert [s.at for s in found] == [
        utc(2026, 3, 29, 1, 0),
        utc(2026, 3, 29, 1, 30),
        utc(2026, 3, 30, 0, 0),
        utc(2026, 3, 30, 0, 30),
    ]


def test_iter_slots_requires_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next(
            iter_slots(
                CronSpec.parse("0 9 * * *"),
                parse_zone("UTC"),
                datetime(2026, 1, 1),
                job_id=JOB,
                schedule_version=1,
            )
        )


def test_after_in_another_offset_is_the_same_instant() -> None:
    a = slots("0 9 * * *", "Europe/Berlin", utc(2026, 6, 1, 12), 2)
    b = slots("0 9 * * *", "Europe/Berlin", datetime(2026, 6, 1, 8, tzinfo=offset(-4)), 2)
    assert a == b
    assert a[0].at == utc(2026, 6, 2, 7, 0)  # 09:00 CEST (+02:00)


# --- timezone change in the middle of a day ------------------------------------------


def moved(cron: str, waiting_for: str, new_zone: str, now: datetime) -> tuple[Slot | None, bool]:
    return continue_in_zone(
        CronSpec.parse(cron),
        datetime.fromisoformat(waiting_for),
        parse_zone(new_zone),
        now,
        job_id=JOB,
        schedule_version=VERSION,
    )


def test_moving_west_after_the_days_heartbeat_does_not_repeat_it() -> None:
    # 10:00 in Berlin (09:00 UTC): today's 09:00 came; the job waits for tomorrow 09:00.
    # It is 04:00 in New York, where 09:00 today is still ahead: it must not fire again.
    slot, catch_up = moved(
        "0 9 * * *", "2026-12-04T09:00:00+01:00", "America/New_York", utc(2026, 12, 3, 9)
    )
    assert slot is not None and not catch_up
    assert slot.local.isoformat() == "2026-12-04T09:00:00-05:00"


def test_moving_east_before_the_days_heartbeat_does_not_lose_it() -> None:
    # 08:00 in New York (13:00 UTC): today's 09:00 has not come. In Berlin it is 14:00 and
    # 09:00 has passed: that day's heartbeat is due at once, as a catch-up.
    slot, catch_up = moved(
        "0 9 * * *", "2026-12-03T09:00:00-05:00", "Europe/Berlin", utc(2026, 12, 3, 13)
    )
    assert slot is not None and catch_up
    assert slot.local.isoformat() == "2026-12-03T09:00:00+01:00"
    assert slot.at == utc(2026, 12, 3, 8)


def test_moving_east_before_its_hour_waits_for_it_in_the_new_zone() -> None:
    # 02:00 in New York (07:00 UTC), 08:00 in Berlin: 09:00 Berlin is still ahead.
    slot, catch_up = moved(
        "0 9 * * *", "2026-12-03T09:00:00-05:00", "Europe/Berlin", utc(2026, 12, 3, 7)
    )
    assert slot is not None and not catch_up
    assert slot.at == utc(2026, 12, 3, 8)


def test_moving_across_the_date_line_does_not_catch_up_an_earlier_local_day() -> None:
    # 08:00 in Los Angeles on 3 December (16:00 UTC) is 01:00 on 4 December in Tokyo:
    # 3 December's 09:00 in Tokyo is yesterday there, so the next slot is 4 December.
    slot, catch_up = moved(
        "0 9 * * *", "2026-12-03T09:00:00-08:00", "Asia/Tokyo", utc(2026, 12, 3, 16)
    )
    assert slot is not None and not catch_up
    assert slot.local.isoformat() == "2026-12-04T09:00:00+09:00"


def test_several_passed_slots_of_the_day_catch_up_only_the_latest() -> None:
    slot, catch_up = moved(
        "0 9,12 * * *", "2026-12-03T09:00:00-05:00", "Europe/Berlin", utc(2026, 12, 3, 13)
    )
    assert slot is not None and catch_up
    assert slot.local.isoformat() == "2026-12-03T12:00:00+01:00"


def test_elapsed_time_schedules_simply_go_on_from_now() -> None:
    slot, catch_up = moved(
        "*/15 * * * *", "2026-12-03T08:15:00-05:00", "Europe/Berlin", utc(2026, 12, 3, 13, 5)
    )
    assert slot is not None and not catch_up
    assert slot.at == utc(2026, 12, 3, 13, 15)


def test_moving_into_a_dst_gap_fires_at_the_end_of_the_gap() -> None:
    # 02:30 does not exist in New York on 8 March 2026; the job moves there from Tokyo
    # at 00:30 EST (05:30 UTC): it fires at 03:00 EDT.
    slot, catch_up = moved(
        "30 2 * * *", "2026-03-08T02:30:00+09:00", "America/New_York", utc(2026, 3, 8, 5, 30)
    )
    assert slot is not None and not catch_up
    assert slot.local.isoformat() == "2026-03-08T03:00:00-04:00"
