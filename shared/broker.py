"""NATS wiring: the FastStream broker with telemetry and Prometheus middlewares, and the
JetStream streams (one per producing service, plus the dead-letter stream)."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, PullSub
from faststream.nats.opentelemetry import NatsTelemetryMiddleware
from faststream.nats.prometheus import NatsPrometheusMiddleware
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import BadRequestError, NotFoundError
from opentelemetry import context as otel_context
from opentelemetry import propagate
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
        # No FastDepends: see ``batch_subscriber``.
        apply_types=False,
    )


BatchHandler = Callable[[list[Msg]], Awaitable[None]]


async def _undecoded(_message: Any) -> None:
    """Batch handlers read each raw message themselves: skip FastStream's decoding."""
    return None


def batch_subscriber(
    broker: NatsBroker,
    subject: str,
    *,
    stream: str,
    durable: str,
    config: ConsumerConfig,
    batch_size: int = 256,
    max_wait: float = 1.0,
) -> Callable[[BatchHandler], BatchHandler]:
    """Subscribe ``async def handler(msgs: list[nats.aio.msg.Msg])`` to a durable pull
    consumer of ``stream``, shared by every instance of the service.

    FastStream fetches up to ``batch_size`` messages, waiting at most ``max_wait`` seconds
    to fill a batch (which bounds the latency it adds; idle, it asks NATS once per
    ``max_wait``), and runs its middlewares (telemetry, Prometheus) once per batch; the
    telemetry span links every message's trace context. The handler acks, naks or
    terminates each message itself, after its effect is durable. Run per message,
    FastStream's machinery (middlewares, context scope, a task per message, FastDepends)
    cost more CPU than the work itself at a few hundred messages a second (measured with
    the burst benchmark), so every consumer here takes batches. The brokers run with
    ``apply_types=False`` and the handler gets the raw messages FastStream put in its
    context."""

    def register(handler: BatchHandler) -> BatchHandler:
        async def handle(_body: Any) -> None:
            await handler(broker.context.get_local("message").raw_message)

        handle.__name__ = handle.__qualname__ = handler.__name__
        handle.__doc__ = handler.__doc__
        broker.subscriber(
            subject,
            stream=JStream(stream, declare=False),
            durable=durable,
            pull_sub=PullSub(batch_size=batch_size, timeout=max_wait, batch=True),
            config=config,
            ack_policy=AckPolicy.MANUAL,
            decoder=_undecoded,
        )(handle)
        return handler

    return register


_jetstreams: weakref.WeakKeyDictionary[Client, JetStreamContext] = weakref.WeakKeyDictionary()


def jetstream(broker: NatsBroker) -> JetStreamContext:
    """JetStream on the broker's own connection, for hot-path publishing without
    FastStream's per-message publish middlewares (see ``publish_many``). One context per
    connection: each sets up its own subscription for pipelined publish acks."""
    connection = broker.connection
    js = _jetstreams.get(connection)
    if js is None:
        js = _jetstreams[connection] = connection.jetstream()
    return js


def message_headers(
    msg_id: str | None = None, context: otel_context.Context | None = None
) -> dict[str, str]:
    """Headers of an outgoing message: the trace context (W3C ``traceparent``, as
    FastStream's telemetry middleware would put it) of ``context``, or of the current
    one, and, for JetStream's duplicate window, ``Nats-Msg-Id``."""
    headers = {"content-type": "application/json"}
    if msg_id is not None:
        headers["Nats-Msg-Id"] = msg_id
    propagate.inject(headers, context=context)
    return headers


Outgoing = tuple[str, bytes, dict[str, str]]  # subject, body, headers


async def publish_many(
    js: JetStreamContext, messages: list[Outgoing], *, stream: str, ack_within: float = 5.0
) -> None:
    """Publish to JetStream without waiting between messages, then wait for every
    stream ack; raise if any is refused or missing after ``ack_within`` seconds (the
    caller publishes them all again: their ``Nats-Msg-Id`` makes repeats harmless).

    Pipelined publishing costs about half the CPU per message of one request-reply
    round trip each (measured with the burst benchmark)."""
    acks = [
        await js.publish_async(subject, body, stream=stream, headers=headers)
        for subject, body, headers in messages
    ]
    try:
        async with asyncio.timeout(ack_within):
            for ack in acks:
                await ack
    finally:
        # An ack that never came must not hold nats-py's bound on pending publishes.
        for ack in acks:
            ack.cancel()
