"""Composition root of the scheduler process, and of the one-shot `liteclaw heartbeat run`."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from fastapi import APIRouter

from services.scheduler.api import build_router
from services.scheduler.application import SchedulerApplication
from services.scheduler.bootstrap_types import SchedulerContext
from services.scheduler.domain import JOB_TYPES, MissedSlots
from services.scheduler.due_index import DueIndexProjection, Ticker, TickResult, compute_next
from services.scheduler.translate import to_contract
from shared.runtime import ServiceRuntime
from shared.settings import SchedulerSettings

log = logging.getLogger(__name__)


def unknown_job_types(settings: SchedulerSettings) -> list[str]:
    return [t for t in settings.job_types if t not in JOB_TYPES]


def job_type_problem(settings: SchedulerSettings) -> str | None:
    unknown = unknown_job_types(settings)
    if not settings.job_types:
        return "HEARTBEAT_JOB_TYPE names no job type"
    if unknown:
        return (
            f"HEARTBEAT_JOB_TYPE names job types no job can have: {', '.join(unknown)} "
            f"(known: {', '.join(sorted(JOB_TYPES))})"
        )
    return None


def build(
    settings: SchedulerSettings, *, run_ticker: bool = True
) -> tuple[ServiceRuntime, list[APIRouter]]:
    runtime, ctx = _build(settings, run_ticker=run_ticker)
    return runtime, [build_router(ctx)]


def _build(
    settings: SchedulerSettings, *, run_ticker: bool
) -> tuple[ServiceRuntime, SchedulerContext]:
    runtime = ServiceRuntime(
        name="scheduler",
        settings=settings,
        application_factory=lambda env: SchedulerApplication(env=env),
        translate=to_contract,
    )
    ctx = SchedulerContext()
    problem = job_type_problem(settings)

    async def job_types_check() -> str:
        return f"error: {problem}" if problem else "ok"

    runtime.add_readiness_check("job_types", job_types_check)

    async def start() -> None:
        ctx.store = runtime.store
        ctx.app = runtime.store.app  # type: ignore[assignment]
        ctx.pool = runtime.pool
        projection = DueIndexProjection(
            store=runtime.store,
            pool=runtime.pool,
            schema=runtime.schema,
            stagger_max=settings.slot_stagger_max,
        )
        runtime.followers.append(projection)
        ticker = ctx.ticker = _ticker(runtime, settings)
        if not run_ticker:
            pass
        elif problem:
            # Serve the API and report the problem in /readyz, but emit nothing: a
            # misconfigured instance must not fire the wrong jobs.
            log.error("ticker not started", extra={"fields": {"reason": problem}})
        else:
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
    return runtime, ctx


def _ticker(runtime: ServiceRuntime, settings: SchedulerSettings) -> Ticker:
    app: SchedulerApplication = runtime.store.app  # type: ignore[assignment]

    async def record_missed(records: list[MissedSlots]) -> int:
        saved = await runtime.store.call(app.record_missed, records)
        runtime.relay.wake()
        return saved

    return Ticker(
        pool=runtime.pool,
        broker=runtime.broker,
        job_types=settings.job_types,
        batch=settings.tick_batch,
        max_sleep=settings.tick_max_sleep,
        misfire_grace=settings.misfire_grace,
        stagger_max=settings.slot_stagger_max,
        record_missed=record_missed,
        registry=runtime.registry,
    )


async def run_once(settings: SchedulerSettings) -> TickResult:
    """One tick and exit: bring the due index up to date, emit every slot due now (with
    the misfire rules), publish the events recorded, and stop. The same guarantees as the
    long-running scheduler, for deployments that drive it from cron."""
    problem = job_type_problem(settings)
    if problem:
        raise SystemExit(f"liteclaw heartbeat run: {problem}")
    runtime, ctx = _build(settings, run_ticker=False)
    await runtime.start(record_start=False)
    try:
        result = await ctx.ticker.drain()
        await runtime.relay.catch_up()
        return result
    finally:
        await runtime.stop()


def main() -> None:
    from shared.runtime import serve

    runtime, routers = build(SchedulerSettings())  # type: ignore[call-arg]
    serve(runtime, routers)


def run_once_main(settings: SchedulerSettings) -> int:
    result = asyncio.run(run_once(settings))
    print(
        f"claimed {result.claimed} due jobs, emitted {result.emitted} SlotDue, "
        f"recorded missed slots for {result.missed_jobs} jobs"
    )
    return 0
