"""OpenTelemetry tracing: OTLP/HTTP export when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Without an endpoint nothing would read the spans, so none are recorded (sampler
``always_off``): trace ids are still made and carried across NATS, so the log lines of
one slot still share a ``trace_id``, at a fraction of the cost per message. With an
endpoint the SDK's sampler applies (``OTEL_TRACES_SAMPLER``, default: parent-based,
always on).

Context crosses NATS in message headers (W3C ``traceparent``): ``shared.broker``'s
``message_headers`` puts it there, and a consumer continues the trace of the message it
handles, so a slot's trace runs from the scheduler's publish to the heartbeat's
delivery. FastStream's NatsTelemetryMiddleware records one span per consumed batch,
linked to the traces of its messages.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF


def setup_tracing(service: str, instance_id: str, endpoint: str | None) -> TracerProvider:
    resource = Resource.create(
        {"service.name": f"liteclaw-{service}", "service.instance.id": instance_id}
    )
    provider = TracerProvider(resource=resource, sampler=None if endpoint else ALWAYS_OFF)
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    return provider


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
