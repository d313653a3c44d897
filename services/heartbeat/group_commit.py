"""Group commit for outcome records.

eventsourcing's PostgreSQL recorder takes a table lock per write to keep the
notification log gapless: one ``save()`` per aggregate manages a few hundred per second,
one ``save()`` of a thousand aggregates many thousands. Concurrent handlers therefore
hand their record to this committer and await it; it writes whatever has gathered in one
``save()``. If the batch hits a duplicate (another instance, or a redelivery, recorded
that slot first), nothing of it was written and it falls back to one write each, so each
caller learns whether its own record was new.
"""

from __future__ import annotations

import asyncio
from typing import Any

from shared.eventstore import EventStore, save_each


class GroupCommitter:
    def __init__(self, store: EventStore, *, max_batch: int = 1000, linger: float = 0.003) -> None:
        self.store = store
        self.max_batch = max_batch
        self.linger = linger
        self._pending: list[tuple[Any, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, aggregate: Any) -> bool:
        """Durably save ``aggregate``; False if a record with its id already existed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((aggregate, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            if len(self._pending) < self.max_batch:
                # Let concurrent handlers join this write.
                await asyncio.sleep(self.linger)
            batch, self._pending = (
                self._pending[: self.max_batch],
                self._pending[self.max_batch :],
            )
            try:
                results = await self.store.call(save_each, self.store.app, [a for a, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), new in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(new)
