"""The process shell every service runs in.

``ServiceRuntime`` owns what a service process holds open: the asyncpg pool (read models
and hot queries), the event store (eventsourcing on worker threads), the FastStream
broker, the relay and the service's background loops. ``serve`` puts it behind uvicorn:
SIGTERM stops new HTTP requests, the lifespan then stops the loops, drains the broker's
subscribers (in-flight messages finish and ack), runs a last relay pump and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import asyncpg
import uvicorn
from eventsourcing.application import Application
from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import CollectorRegistry, Counter

from shared.broker import ensure_streams, make_broker
from shared.eventstore import EventStore, ServiceInstance, postgres_env
from shared.http import bearer_auth, install_error_handlers, install_health_routes
from shared.logs import setup_logging
from shared.projection import TrackedFollower
from shared.relay import Relay, Translator
from shared.settings import ServiceSettings
from shared.telemetry import setup_tracing

log = logging.getLogger(__name__)

DEFAULT_PORTS = {
    "auth": 8101,
    "claims": 8102,
    "heartbeat": 8103,
    "scheduler": 8104,
    "monitor": 8105,
}


def package_version() -> str:
    try:
        return version("liteclaw-backend")
    except PackageNotFoundError:
        return "0.0.0+local"


class ServiceRuntime:
    def __init__(
        self,
        *,
        name: str,
        settings: ServiceSettings,
        application_factory: Callable[[dict[str, str]], Application],
        translate: Translator,
    ) -> None:
        self.name = name
        self.settings = settings
        self.schema = name
        self.registry = CollectorRegistry()
        self.tracer_provider = setup_tracing(
            name, settings.instance_id, settings.otel_exporter_otlp_endpoint
        )
        self.broker = make_broker(
            settings.nats_servers,
            service=name,
            tracer_provider=self.tracer_provider,
            registry=self.registry,
            graceful_timeout=settings.shutdown_grace,
        )
        self._application_factory = application_factory
        self._translate = translate
        self.pool: asyncpg.Pool
        self.store: EventStore
        self.relay: Relay
        self._loops: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._on_drain: list[Callable[[float], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._readiness_checks: dict[str, Callable[[], Awaitable[str]]] = {}
        self.followers: list[TrackedFollower] = []
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self.started_total = Counter(
            "liteclaw_service_starts_total",
            "Starts of this service process",
            registry=self.registry,
        )

    # -- composition hooks used by each service's bootstrap --------------------------

    def add_loop(self, loop: Callable[[], Awaitable[None]]) -> None:
        """A coroutine run for the life of the process (cancelled on shutdown)."""
        self._loops.append(loop)

    def on_start(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Runs once the pool and event store exist, before the broker starts."""
        self._on_start.append(fn)

    def on_drain(self, fn: Callable[[float], Awaitable[None]]) -> None:
        """Runs on shutdown once the subscribers stopped fetching, with the seconds left
        to finish in-flight work (work a handler handed off to tasks of its own)."""
        self._on_drain.append(fn)

    def on_stop(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(fn)

    def add_readiness_check(self, name: str, check: Callable[[], Awaitable[str]]) -> None:
        """``check`` returns "ok" or a short reason; anything else makes /readyz 503."""
        self._readiness_checks[name] = check

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, *, record_start: bool = True) -> None:
        """Open everything; ``record_start`` stores ServiceStarted (one-shot commands that
        run from cron pass False, or every run would look like a restart)."""
        s = self.settings
        # Instances starting together on a fresh database would race on CREATE ... IF NOT
        # EXISTS (PostgreSQL fails the loser with a unique violation): they set up the
        # schema one at a time, under an advisory lock on a connection of its own.
        setup = await asyncpg.connect(s.database_url, timeout=5)
        try:
            await setup.execute(
                "SELECT pg_advisory_lock(hashtext($1))", f"liteclaw:setup:{self.schema}"
            )
            await setup.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await self._open_stores()
            await self.relay.setup()
            for fn in self._on_start:
                await fn()
            for follower in self.followers:
                await follower.setup()
        finally:
            await setup.close()  # releases the lock
        for follower in self.followers:
            await follower.catch_up()
        await ensure_streams(s.nats_servers, s.stream_replicas)
        await self.broker.start()
        # Every start is an event: operators count restarts from ServiceStarted.
        if record_start:
            await self.store.save(
                ServiceInstance(
                    service=self.name,
                    instance_id=s.instance_id,
                    pid=os.getpid(),
                    release=package_version(),
                )
            )
            self.started_total.inc()
        self.relay.wake()
        self._tasks = [asyncio.create_task(self._guard(self.relay.run))]
        self._tasks += [asyncio.create_task(self._guard(f.run)) for f in self.followers]
        self._tasks += [asyncio.create_task(self._guard(loop)) for loop in self._loops]
        log.info(
            "service started",
            extra={"fields": {"instance_id": s.instance_id, "pid": os.getpid()}},
        )

    async def _open_stores(self) -> None:
        s = self.settings
        self.pool = await asyncpg.create_pool(
            s.database_url,
            min_size=1,
            max_size=10,
            timeout=5,
            command_timeout=30,
            server_settings={
                "search_path": self.schema,
                "application_name": f"liteclaw-{self.name}",
            },
        )
        env = postgres_env(s.database_url, self.schema)
        app = await asyncio.to_thread(self._application_factory, env)
        self.store = EventStore(app)
        self.relay = Relay(
            service=self.name,
            broker=self.broker,
            translate=self._translate,
            store=self.store,
            pool=self.pool,
            schema=self.schema,
            interval=s.relay_interval,
        )

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        # A background loop that dies would silently stop the service's work; restart it.
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background loop crashed; restarting in 1 s")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        log.info("service draining")
        grace = self.settings.shutdown_grace
        # 1. Stop fetching: FastStream's subscribers stop and let running handlers finish
        #    (up to SHUTDOWN_GRACE). The connection stays open for what follows.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(sub.stop() for sub in self.broker.subscribers)),
                timeout=grace + 5,
            )
        # 2. Work handed off by handlers finishes, is recorded and acked.
        for drain in self._on_drain:
            with contextlib.suppress(Exception):
                await drain(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fn in self._on_stop:
            with contextlib.suppress(Exception):
                await fn()
        # 3. Publish what the drained work recorded while the connection is still open;
        #    whatever is left goes at the next start.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.relay.pump(), timeout=5)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), timeout=5)
        self.tracer_provider.shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pool.close(), timeout=5)
        await asyncio.to_thread(self.store.close)
        log.info("service stopped")

    async def readiness(self) -> dict[str, str]:
        checks: dict[str, str] = {}
        try:
            ok = await self.broker.ping(timeout=1.0)
            checks["nats"] = "ok" if ok else "disconnected"
        except Exception as exc:
            checks["nats"] = f"error: {type(exc).__name__}"
        try:
            async with asyncio.timeout(2.0):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"error: {type(exc).__name__}"
        for name, check in self._readiness_checks.items():
            try:
                checks[name] = await check()
            except Exception as exc:
                checks[name] = f"error: {type(exc).__name__}"
        return checks


def build_http_app(runtime: ServiceRuntime, routers: list[APIRouter]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title=f"Lite Claw {runtime.name}", version=package_version(), lifespan=lifespan)
    install_error_handlers(app)
    install_health_routes(app, registry=runtime.registry, readiness=runtime.readiness)
    auth = bearer_auth(runtime.settings.liteclaw_api_token.get_secret_value())
    for router in routers:
        app.include_router(router, dependencies=[Depends(auth)])
    return app


def serve(runtime: ServiceRuntime, routers: list[APIRouter], **uvicorn_options: Any) -> None:
    """Run one service process until SIGTERM/SIGINT."""
    setup_logging(runtime.name, runtime.settings.log_level)
    port = runtime.settings.service_port or DEFAULT_PORTS[runtime.name]
    config = uvicorn.Config(
        build_http_app(runtime, routers),
        host=runtime.settings.service_host,
        port=port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(runtime.settings.shutdown_grace),
        lifespan="on",
        **uvicorn_options,
    )
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise SystemExit(1)
