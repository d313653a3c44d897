"""NATS wiring: the FastStream broker with telemetry and Prometheus middlewares, and the
JetStream streams (one per producing service, plus the dead-letter stream)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from faststream.nats import NatsBroker, NatsMessage
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from shared.contracts import DLQ_STREAM, SERVICES, stream_name, stream_subjects

log = logging.getLogger(__name__)

# JetStream's duplicate window: a re-publish with the same Nats-Msg-Id inside it is
# dropped by the server. Consumers keep their own durable record beyond it.
DUPLICATE_WINDOW_S = 2 * 60 * 60


def stream_configs(replicas: int = 1) -> list[StreamConfig]:
    configs = [
        StreamConfig(
            name=stream_name(service),
            subjects=stream_subjects(service),
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            max_age=30 * 24 * 3600,
        )
        for service in SERVICES
    ]
    configs.append(
        StreamConfig(
            name=DLQ_STREAM,
            subjects=["liteclaw.dlq.>"],
            duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=replicas,
            max_age=90 * 24 * 3600,
        )
    )
    return configs


async def ensure_streams(servers: list[str], replicas: int = 1) -> None:
    """Create or update every stream; safe to call from any number of processes."""
    nc = await nats.connect(servers=servers, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        for config in stream_configs(replicas):
            assert config.name is not None
            try:
                await js.stream_info(config.name)
                await js.update_stream(config)
            except NotFoundError:
                try:
                    await js.add_stream(config)
                except BadRequestError:
                    # Another process created it between our two calls.
                    await js.update_stream(config)
    finally:
        await nc.drain()


_fetch_patched = False


def _normalise_fetch_timeouts() -> None:
    """nats-py 2.16 raises the builtin ``TimeoutError`` from an idle pull ``fetch`` in one
    branch, while FastStream 0.7.8's pull loop only suppresses ``nats.errors.TimeoutError``
    and so logs an ERROR traceback and restarts the loop every few idle seconds. Re-raise
    it as the nats error both libraries agree on. Remove when either side is fixed."""
    global _fetch_patched
    if _fetch_patched:
        return
    import functools

    from nats.errors import TimeoutError as NatsTimeoutError
    from nats.js.client import JetStreamContext

    original = JetStreamContext.PullSubscription.fetch

    @functools.wraps(original)
    async def fetch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await original(self, *args, **kwargs)
        except NatsTimeoutError:
            raise
        except TimeoutError as exc:
            raise NatsTimeoutError from exc

    JetStreamContext.PullSubscription.fetch = fetch  # type: ignore[method-assign]
    _fetch_patched = True


def make_broker(
    servers: list[str],
    *,
    service: str,
    tracer_provider: TracerProvider,
    registry: CollectorRegistry,
    graceful_timeout: float = 15.0,
) -> NatsBroker:
    _normalise_fetch_timeouts()
    return NatsBroker(
        servers,
        # On stop, in-flight handlers get this long to finish and ack.
        graceful_timeout=graceful_timeout,
        name=f"liteclaw-{service}",
        # Keep reconnecting forever: a broker restart must not kill the service.
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        connect_timeout=5,
        middlewares=[
            NatsTelemetryMiddleware(tracer_provider=tracer_provider),
            NatsPrometheusMiddleware(registry=registry, app_name=f"liteclaw_{service}"),
        ],
        logger=logging.getLogger(f"faststream.{service}"),
        # No FastDepends: see ``message_handler``.
        apply_types=False,
    )


MessageHandler = Callable[[NatsMessage], Awaitable[None]]
BodyHandler = Callable[[Any], Awaitable[None]]


def message_handler(broker: NatsBroker) -> Callable[[MessageHandler], BodyHandler]:
    """Adapt ``async def handler(msg: NatsMessage)`` to a broker built by ``make_broker``.

    Every handler here takes the message itself (it acks by hand, after the outcome is
    stored). With FastDepends, injecting it cost a worker-thread hop per message (its
    context field is resolved synchronously in a thread pool), the largest single cost
    of a delivery in the burst benchmark; so the brokers run with ``apply_types=False``
    and the handler reads the message FastStream has put in its context."""

    def wrap(handler: MessageHandler) -> BodyHandler:
        async def handle(_body: Any) -> None:
            await handler(broker.context.get_local("message"))

        handle.__name__ = handle.__qualname__ = handler.__name__
        handle.__doc__ = handler.__doc__
        return handle

    return wrap
