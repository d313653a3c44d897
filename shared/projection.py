"""Tracked followers of a service's notification log.

A follower reads the event store's notifications after its recorded position, handles
them, and advances the position in the same PostgreSQL transaction as its own writes, so
a read model and its position never disagree and a rebuild is "reset position, pump".
The position row is taken ``FOR UPDATE SKIP LOCKED``: with several instances running,
exactly one works on a follower at a time and the others skip.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence

import asyncpg
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import Notification

from shared.eventstore import EventStore

log = logging.getLogger(__name__)

Item = tuple[Notification, DomainEventProtocol]


class TrackedFollower(ABC):
    name: str

    def __init__(
        self,
        *,
        store: EventStore,
        pool: asyncpg.Pool,
        schema: str,
        batch: int = 1000,
        interval: float = 0.5,
    ) -> None:
        self.store = store
        self.pool = pool
        self.schema = schema
        self.batch = batch
        self.interval = interval
        self._wake = asyncio.Event()

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                f"""
                CREATE TABLE IF NOT EXISTS "{self.schema}".tracking (
                    name text PRIMARY KEY,
                    position bigint NOT NULL
                )"""
            )
            await conn.execute(
                f"""INSERT INTO "{self.schema}".tracking (name, position) VALUES ($1, 0)
                    ON CONFLICT DO NOTHING""",
                self.name,
            )
            await self.setup_tables(conn)

    async def setup_tables(self, conn: asyncpg.Connection) -> None:  # noqa: B027
        """Create the follower's own tables (idempotent); none by default."""

    @abstractmethod
    async def process(self, conn: asyncpg.Connection, items: Sequence[Item]) -> None:
        """Handle a batch inside the transaction that will advance the position."""

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = self.interval
        while True:
            try:
                count = await self.pump()
                backoff = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # outlive broker and database outages
                log.warning(
                    "follower pump failed; retrying",
                    extra={
                        "fields": {
                            "follower": self.name,
                            "error_class": type(exc).__name__,
                            "retry_in_s": backoff,
                        }
                    },
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            if count < self.batch:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.interval)
                except TimeoutError:
                    pass

    async def pump(self) -> int:
        """Process the next batch; return how many notifications it read."""
        async with self.pool.acquire() as conn, conn.transaction():
            position = await conn.fetchval(
                f"""SELECT position FROM "{self.schema}".tracking
                    WHERE name = $1 FOR UPDATE SKIP LOCKED""",
                self.name,
            )
            if position is None:
                return 0  # another instance holds this follower right now
            notifications = await self.store.call(
                self.store.app.recorder.select_notifications, position + 1, self.batch
            )
            if not notifications:
                return 0
            mapper = self.store.app.mapper
            items = [(n, mapper.to_domain_event(n)) for n in notifications]
            await self.process(conn, items)
            await conn.execute(
                f"""UPDATE "{self.schema}".tracking SET position = $2 WHERE name = $1""",
                self.name,
                notifications[-1].id,
            )
            return len(notifications)

    async def catch_up(self) -> None:
        """Pump until nothing is left (used after a local write, and at start)."""
        while await self.pump() >= self.batch:
            pass
