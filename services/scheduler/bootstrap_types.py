"""What the scheduler's entrypoints are given by the bootstrap (filled in at start)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg

from services.scheduler.application import SchedulerApplication
from services.scheduler.due_index import Ticker
from services.scheduler.schedule import Slot
from shared.eventstore import EventStore


class SchedulerContext:
    store: EventStore
    app: SchedulerApplication
    pool: asyncpg.Pool
    after_write: Callable[[], Awaitable[None]]
    next_slot: Callable[[UUID, str, str, int], Slot | None]
    ticker: Ticker
