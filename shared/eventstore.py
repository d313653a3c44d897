"""Event store wiring: eventsourcing on PostgreSQL, one schema per service.

eventsourcing 9.5 is synchronous (psycopg). Services never call it on the event loop:
``EventStore`` runs every call on a small thread pool of its own.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import IntegrityError

P = ParamSpec("P")
T = TypeVar("T")


def postgres_env(database_url: str, schema: str, *, pool_size: int = 5) -> dict[str, str]:
    """The environment eventsourcing's PostgreSQL persistence module reads."""
    parts = urlsplit(database_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": (parts.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_HOST": parts.hostname or "127.0.0.1",
        "POSTGRES_PORT": str(parts.port or 5432),
        "POSTGRES_USER": unquote(parts.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(parts.password or ""),
        "POSTGRES_SCHEMA": schema,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "5",
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_MAX_WAITING": "0",
        "CREATE_TABLE": "y",
        # Check a pooled connection before use, so the store survives a database restart.
        "POSTGRES_PRE_PING": "y",
    }


def ensure_schema(database_url: str, schema: str) -> None:
    """Create a schema for tools (benchmarks, test set-up) that use an event store
    outside a service; eventsourcing creates its tables inside it. A service creates its
    own at start, under a lock (``ServiceRuntime.start``)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=5) as conn:
        try:
            conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateSchema):
            pass  # created concurrently by someone else: it exists, which is the point


class ServiceInstance(Aggregate):
    """One start of one service process. Its only event is the fact that it started."""

    class Started(Aggregate.Created):
        service: str
        instance_id: str
        pid: int
        release: str

    @event(Started)
    def __init__(self, service: str, instance_id: str, pid: int, release: str) -> None:
        self.service = service
        self.instance_id = instance_id
        self.pid = pid
        # Not "version": that name is the aggregate's own event version.
        self.release = release


def save_each(app: Application, aggregates: list[Any]) -> list[bool]:
    """Save a batch in one write if possible; if any already exists (a duplicate id),
    nothing was written, so fall back to one write each. Returns, per aggregate, whether
    it was new. Deterministic ids make this the durable dedup.

    The pending events are collected once, up front: a failed save has already drained
    them from the aggregates, so the fallback must save the collected events."""
    batches = [aggregate.collect_events() for aggregate in aggregates]
    try:
        app.save(*(event for batch in batches for event in batch))
        return [True] * len(aggregates)
    except IntegrityError:
        results = []
        for batch in batches:
            try:
                app.save(*batch)
                results.append(True)
            except IntegrityError:
                results.append(False)
        return results


class EventStore:
    """Runs a synchronous eventsourcing application's calls off the event loop."""

    def __init__(self, app: Application, *, threads: int = 8) -> None:
        self.app = app
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eventstore")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def save(self, *aggregates: Any) -> Any:
        return await self.call(self.app.save, *aggregates)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.app.close()
