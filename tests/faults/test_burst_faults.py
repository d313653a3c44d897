"""Faults during a burst of 5,000 slots, over real NATS JetStream and PostgreSQL, with the
services as real processes and a real (signature-checking) webhook receiver.

Every test registers 5,000 jobs whose one slot of the day falls on the same second a few
seconds ahead (a daily 6-field cron), so the expected slot keys are known exactly; then
it injects one fault while that burst is in progress and checks, once the system has
settled, that:

* every slot has exactly one outcome in the heartbeat's event store, and it is ``sent``;
  no slot has two outcomes, and none is logged ``sent`` twice;
* the receiver saw every slot key (a repeat delivery after a crash between delivering
  and recording is allowed, and counted: the ``webhook-id`` lets a receiver drop it);
* the outcomes match the misfire rules: a burst delayed by seconds is inside the default
  15-minute grace, so nothing is recorded ``skippedMissed``; after an outage longer than
  a short grace, only the latest slot per job inside the window is caught up and the
  older one is one ``SlotsMissed`` record.

Each test owns its NATS and database (and its PostgreSQL when it restarts it); every
process it starts is killed and its directory removed by the fixtures.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.faults._support import (
    N_SLOTS,
    SCHEDULER_STREAM,
    SLOTS_MISSED,
    Burst,
    LogWatch,
    Stack,
    check_exactly_once,
    emitted_keys,
    kill9,
    messages,
    no_slots_missed,
    prepare_burst,
    say,
    sleep_until,
    slot_due_keys,
    stop_all,
    stored_count,
    wait_settled,
    wait_until,
)
from tests.support.processes import ServiceProcess

pytestmark = pytest.mark.timeout(300)

# From the burst instant: time for the whole burst to be recorded, including a redelivery
# after the consumer's ack_wait (DELIVERY_DEADLINE 5 s + 30 s) when an instance died.
SETTLE = 180.0
SLOT_DUE_LINE = '"decision": "slot_due"'


def start_pair(stack: Stack, **scheduler_env: str) -> None:
    scheduler = stack.start("scheduler", wait=False, **scheduler_env)
    heartbeat = stack.start("heartbeat", wait=False)
    stack.ready(scheduler, heartbeat)


def service(stack: Stack, name: str) -> list[ServiceProcess]:
    """The live processes of one service."""
    return [s for s in stack.services if s.name == name and s.proc.poll() is None]


def emitted_once(stack: Stack, keys: set[str]) -> None:
    """The scheduler's stream holds exactly one SlotDue per slot in ``keys``, no other."""
    stored = slot_due_keys(stack)
    assert set(stored) == keys, (
        f"SlotDue keys differ from the expected slots: {len(set(stored) - keys)} extra, "
        f"{len(keys - set(stored))} missing"
    )
    assert all(n == 1 for n in stored.values()), [k for k, n in stored.items() if n > 1][:5]


def received_at_least(stack: Stack, count: int, timeout: float = 60) -> dict[str, int]:
    """Wait until the receiver has seen ``count`` distinct slot keys."""
    assert stack.receiver is not None
    receiver = stack.receiver

    def reached() -> dict[str, int] | None:
        got = receiver.count()
        return got if got["keys"] >= count else None

    try:
        return wait_until(reached, timeout, f"{count} slots at the receiver", every=0.05)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tails()}") from None


def settle_and_check(stack: Stack, burst: Burst) -> None:
    """The checks every burst fault ends with (see the module docstring)."""
    wait_settled(stack, burst.expected, SETTLE)
    report = check_exactly_once(stack, burst.expected)
    emitted_once(stack, burst.expected)
    no_slots_missed(stack)
    say(f"receiver got {sum(report.seen.values())} requests for {len(report.seen)} slots")


# --- kill -9 the heartbeat mid-delivery -----------------------------------------------------


def test_heartbeat_killed_mid_delivery(stack: Stack) -> None:
    """kill -9 of the heartbeat while deliveries are in flight (the receiver holds each
    answer 0.1 s): after a restart every slot is delivered and recorded ``sent`` exactly
    once; what the dead instance had delivered but not recorded is delivered again (a
    receiver-side repeat with the same webhook-id), never recorded twice."""
    stack.start_receiver(delay=0.1)
    start_pair(stack)
    burst = prepare_burst(stack)
    sleep_until(burst.due)

    at_kill = received_at_least(stack, N_SLOTS // 5)
    [heartbeat] = service(stack, "heartbeat")
    kill9(heartbeat)
    stored = stored_count(stack)
    say(f"killed the heartbeat: receiver {at_kill}, {stored} outcomes stored")
    assert at_kill["keys"] < N_SLOTS, "the burst was over before the kill"
    assert stored < N_SLOTS, "every outcome was stored before the kill"

    stack.start("heartbeat")
    settle_and_check(stack, burst)


# --- two schedulers, kill -9 one mid-tick -----------------------------------------------------


def test_one_of_two_schedulers_killed_mid_tick(stack: Stack) -> None:
    """Two schedulers share the due index; the first one seen publishing the burst is
    killed -9 after a few hundred SlotDue, inside its tick's transaction. The rows it
    claimed roll back and the other instance publishes them: every slot is emitted once
    (JetStream drops the re-published keys), delivered and recorded ``sent`` once."""
    stack.start_receiver()
    first = stack.start("scheduler", wait=False)
    second = stack.start("scheduler", wait=False)
    heartbeat = stack.start("heartbeat", wait=False)
    stack.ready(first, second, heartbeat)
    burst = prepare_burst(stack)
    watches = {s.proc.pid: (s, LogWatch(s.log, SLOT_DUE_LINE)) for s in (first, second)}
    sleep_until(burst.due - timedelta(seconds=1))

    def emitting() -> ServiceProcess | None:
        for s, watch in watches.values():
            if watch.poll() >= 200:
                return s
        return None

    victim = wait_until(emitting, 30, "a scheduler publishing the burst", every=0.01)
    kill9(victim)
    survivor = second if victim is first else first
    at_kill = len(emitted_keys(victim))
    say(f"killed a scheduler after it published {at_kill} SlotDue")
    assert at_kill < N_SLOTS

    settle_and_check(stack, burst)
    # The kill landed inside a tick: the survivor re-published slots the victim had
    # published but not committed as advanced.
    by_victim, by_survivor = set(emitted_keys(victim)), set(emitted_keys(survivor))
    again = by_victim & by_survivor
    say(f"victim {len(by_victim)}, survivor {len(by_survivor)}, re-published {len(again)}")
    assert again, "the survivor re-published nothing: the kill did not land mid-tick"
    assert by_victim | by_survivor == burst.expected


# --- restart NATS mid-burst ---------------------------------------------------------------------


def test_nats_restarted_mid_burst(stack: Stack) -> None:
    """NATS is stopped while the scheduler is publishing the burst and the heartbeat is
    delivering it, and started again 2 s later on the same port and store directory.
    Both services reconnect on their own; every slot is emitted once and recorded
    ``sent`` once, and the receiver sees every key."""
    stack.start_receiver()
    start_pair(stack)
    burst = prepare_burst(stack)
    [scheduler] = service(stack, "scheduler")
    watch = LogWatch(scheduler.log, SLOT_DUE_LINE)
    sleep_until(burst.due)

    at_stop = received_at_least(stack, 50)
    stack.nats.stop()
    published = watch.poll()
    say(f"NATS stopped: receiver {at_stop}, scheduler published {published}")
    time.sleep(2.0)
    stack.nats.start()
    say("NATS started again")
    assert at_stop["keys"] < N_SLOTS, "the burst was over before the restart"

    settle_and_check(stack, burst)


# --- restart PostgreSQL mid-burst --------------------------------------------------------------


def test_postgres_restarted_mid_burst(stack_own_pg: Stack) -> None:
    """PostgreSQL (the due index, both event stores, the read models) is stopped while
    the burst is being published and delivered, and started again 2 s later on the same
    data directory and port. Deliveries whose outcome could not be saved are retried, so
    some are delivered twice (same webhook-id), but every slot ends with exactly one
    stored outcome, ``sent``."""
    stack = stack_own_pg
    assert stack.pg is not None
    stack.start_receiver()
    start_pair(stack)
    burst = prepare_burst(stack)
    [scheduler] = service(stack, "scheduler")
    watch = LogWatch(scheduler.log, SLOT_DUE_LINE)
    sleep_until(burst.due)

    at_stop = received_at_least(stack, 50)
    stack.pg.stop()
    published = watch.poll()
    say(f"PostgreSQL stopped: receiver {at_stop}, scheduler published {published}")
    time.sleep(2.0)
    stack.pg.start()
    say("PostgreSQL started again")
    assert at_stop["keys"] < N_SLOTS, "the burst was over before the restart"

    settle_and_check(stack, burst)


# --- stop everything for longer than the grace window ----------------------------------------

GRACE = 15  # MISFIRE_GRACE for this test, seconds
GAP = 20  # seconds between a job's two slots; both fall inside the outage


def test_every_service_stopped_longer_than_the_grace_window(stack: Stack) -> None:
    """Every job fires twice, at T and T + 20 s. The scheduler and the heartbeat are
    stopped before T and started again just after T + 20 s (an outage of more than
    MISFIRE_GRACE = 15 s). Misfire rules: slot T is older than the grace window when the
    scheduler comes back, so it is never emitted nor delivered, and is written down as one
    ``SlotsMissed`` (``skippedMissed``) per job; slot T + 20 s is inside the window and is
    caught up: emitted once, delivered, recorded ``sent`` once."""
    stack.start_receiver()
    start_pair(stack, MISFIRE_GRACE=str(GRACE))
    burst = prepare_burst(stack, lead=15, gap=GAP)
    first, last = burst.instants
    missed, caught_up = burst.keys_at(first), burst.keys_at(last)

    stop_all(stack.services)
    stopped_at = datetime.now(UTC)
    say(f"every service stopped, {(first - stopped_at).total_seconds():.1f}s before {first}")
    assert stopped_at < first, "the services stopped after the first slot: machine too slow"
    assert not slot_due_keys(stack), "a slot was emitted before the outage"

    sleep_until(last + timedelta(seconds=1))
    start_pair(stack, MISFIRE_GRACE=str(GRACE))
    restarted_at = datetime.now(UTC)
    outage = (restarted_at - stopped_at).total_seconds()
    say(f"restarted after an outage of {outage:.1f}s")
    assert outage > GRACE

    wait_settled(stack, caught_up, SETTLE)
    check_exactly_once(stack, caught_up, not_sent=missed)
    emitted_once(stack, caught_up)

    # One SlotsMissed per job, naming exactly its slot T.
    events = messages(stack.nats.url, SCHEDULER_STREAM, SLOTS_MISSED)
    per_job = Counter(e["job_id"] for e in events)
    assert len(per_job) == N_SLOTS, f"SlotsMissed for {len(per_job)} of {N_SLOTS} jobs"
    assert all(n == 1 for n in per_job.values()), [j for j, n in per_job.items() if n > 1][:5]
    for event in events:
        assert event["reason"] == "skippedMissed", event
        assert event["count"] == 1 and event["count_is_lower_bound"] is False, event
        assert event["first_slot_key"] == event["last_slot_key"], event
        assert datetime.fromisoformat(event["first_scheduled_for"]) == first, event
    assert {e["first_slot_key"] for e in events} == missed
