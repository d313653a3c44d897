"""Composition root of the scheduler process."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter

from services.scheduler.api import build_router
from services.scheduler.application import SchedulerApplication
from services.scheduler.bootstrap_types import SchedulerContext
from services.scheduler.due_index import DueIndexProjection, Ticker, compute_next
from services.scheduler.translate import to_contract
from shared.runtime import ServiceRuntime
from shared.settings import SchedulerSettings


def build(settings: SchedulerSettings) -> tuple[ServiceRuntime, list[APIRouter]]:
    runtime = ServiceRuntime(
        name="scheduler",
        settings=settings,
        application_factory=lambda env: SchedulerApplication(env=env),
        translate=to_contract,
    )
    ctx = SchedulerContext()

    async def start() -> None:
        ctx.store = runtime.store
        ctx.app = runtime.store.app  # type: ignore[assignment]
        ctx.pool = runtime.pool
        projection = DueIndexProjection(
            store=runtime.store, pool=runtime.pool, schema=runtime.schema
        )
        runtime.followers.append(projection)
        ticker = Ticker(
            pool=runtime.pool,
            broker=runtime.broker,
            job_types=settings.job_types,
            batch=settings.tick_batch,
            max_sleep=settings.tick_max_sleep,
            registry=runtime.registry,
        )
        runtime.add_loop(ticker.run)

        async def after_write() -> None:
            # Make the write visible to reads and to the ticker before answering.
            await projection.catch_up()
            runtime.relay.wake()
            ticker.wake()

        ctx.after_write = after_write
        ctx.next_slot = lambda job_id, cron, tz, version: compute_next(
            job_id, cron, tz, version, datetime.now(UTC)
        )

    runtime.on_start(start)
    return runtime, [build_router(ctx)]


def main() -> None:
    from shared.runtime import serve

    runtime, routers = build(SchedulerSettings())  # type: ignore[call-arg]
    serve(runtime, routers)
