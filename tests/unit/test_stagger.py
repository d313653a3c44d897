"""Pure tests of the per-job stagger (services/scheduler/due_index.py): it spreads a
top-of-minute burst, and it is a function of the job id alone, so every scheduler
instance and every replay computes the same firing instant."""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

from services.scheduler.due_index import stagger

JOB = UUID("12345678-1234-5678-1234-567812345678")


def test_zero_or_negative_bound_turns_it_off() -> None:
    assert stagger(JOB, 0) == timedelta(0)
    assert stagger(JOB, -5) == timedelta(0)


def test_same_job_same_offset_every_time() -> None:
    # A fresh UUID object with the same value, as a replay or another instance has it.
    again = UUID(str(JOB))
    assert stagger(JOB, 30) == stagger(again, 30)
    assert [stagger(JOB, 30) for _ in range(5)] == [stagger(JOB, 30)] * 5


def test_offsets_stay_inside_the_bound() -> None:
    for bound in (0.5, 1, 30, 300):
        for _ in range(500):
            offset = stagger(uuid4(), bound)
            assert timedelta(0) <= offset < timedelta(seconds=bound), (bound, offset)


def test_offsets_spread_over_the_whole_window() -> None:
    """1,000 jobs due at the same second land all over a 10 s window, not in a clump:
    every tenth of the window gets some of them, and none gets more than twice its share."""
    bound = 10.0
    buckets = [0] * 10
    for _ in range(1000):
        buckets[int(stagger(uuid4(), bound).total_seconds() // 1)] += 1
    assert all(n > 0 for n in buckets), buckets
    assert max(buckets) < 200, buckets
    distinct = {stagger(uuid4(), bound) for _ in range(1000)}
    assert len(distinct) > 900, "offsets should be (nearly) unique at millisecond grain"
