"""Coalescing of per-message work into batches.

Hundreds of concurrent handlers each need a database answer or write. Made one by one,
those queue for the connection pool, and writes to the event store serialise on its
table lock (eventsourcing's PostgreSQL recorder locks the table per write to keep the
notification log gapless: one ``save()`` per aggregate manages a few hundred per second,
one ``save()`` of a thousand many thousands). A ``Coalescer`` gathers the requests that
arrive within a few milliseconds and answers them all with one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from shared.eventstore import EventStore, save_each

In = TypeVar("In")
Out = TypeVar("Out")


class Coalescer(Generic[In, Out]):
    """``await c.submit(x)`` → ``batch_fn([..., x, ...])[i]``, one call per gathered batch."""

    def __init__(
        self,
        batch_fn: Callable[[list[In]], Awaitable[Sequence[Out]]],
        *,
        max_batch: int = 1000,
        linger: float = 0.002,
    ) -> None:
        self.batch_fn = batch_fn
        self.max_batch = max_batch
        self.linger = linger
        self._pending: list[tuple[In, asyncio.Future[Out]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: In) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            if len(self._pending) < self.max_batch:
                await asyncio.sleep(self.linger)  # let concurrent handlers join
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                results = await self.batch_fn([item for item, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class GroupCommitter:
    """Durable saves of outcome records, many per event-store write. If a batch hits a
    duplicate id (another instance or a redelivery recorded that slot first), nothing of
    it was written and it falls back to one write each, so each caller learns whether
    its own record was new."""

    def __init__(self, store: EventStore, *, max_batch: int = 1000) -> None:
        async def save(aggregates: list[Any]) -> list[bool]:
            return await store.call(save_each, store.app, aggregates)

        self._coalescer: Coalescer[Any, bool] = Coalescer(save, max_batch=max_batch, linger=0.003)

    async def save(self, aggregate: Any) -> bool:
        """Durably save ``aggregate``; False if a record with its id already existed."""
        return await self._coalescer.submit(aggregate)
