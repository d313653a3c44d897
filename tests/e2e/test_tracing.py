"""One trace per slot: from the scheduler's publish of SlotDue to the heartbeat's delivery,
exported over OTLP/HTTP to a real receiver and joined by the W3C context that crosses NATS
in message headers."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e._system import Liteclaw, create_heartbeat, wait_until
from tests.support.receivers import OtlpReceiver, ReceivedSpan, WebhookReceiver

pytestmark = pytest.mark.timeout(600)

SCHEDULER = "liteclaw-scheduler"
HEARTBEAT = "liteclaw-heartbeat"


def _parent_chain(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """``span`` and its ancestors within ``spans`` (one trace), nearest first; stops at a
    root or at a parent not (yet) received."""
    by_id = {s.span_id: s for s in spans}
    chain = [span]
    while chain[-1].parent_span_id and chain[-1].parent_span_id in by_id:
        parent = by_id[chain[-1].parent_span_id]
        if parent in chain:  # a cycle would be a bug in the exporter; never loop on it
            break
        chain.append(parent)
    return chain


def _joined_trace(
    receiver: OtlpReceiver, delivered: set[str]
) -> tuple[str, ReceivedSpan, ReceivedSpan, list[ReceivedSpan]] | None:
    """A trace holding a delivered slot's ``scheduler.slot_due`` span (scheduler) and its
    ``heartbeat.deliver`` span (heartbeat), the latter descending from the former."""
    for trace_id, spans in receiver.traces().items():
        published = [
            s for s in spans if s.service_name == SCHEDULER and s.name == "scheduler.slot_due"
        ]
        deliveries = [
            s for s in spans if s.service_name == HEARTBEAT and s.name == "heartbeat.deliver"
        ]
        for deliver in deliveries:
            if deliver.attributes.get("liteclaw.slot_key") not in delivered:
                continue
            chain = _parent_chain(deliver, spans)
            for publish in published:
                if publish in chain:
                    return trace_id, publish, deliver, chain[: chain.index(publish) + 1]
    return None


def test_slot_trace_runs_from_scheduler_to_heartbeat(
    liteclaw: Liteclaw,
    otlp_receiver: OtlpReceiver,
    webhook_receiver: WebhookReceiver,
    http: httpx.Client,
) -> None:
    # 1. `liteclaw up` exporting traces to the OTLP receiver.
    system = liteclaw.start(
        liteclaw.data_dir(), extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}
    )

    # 2. A profile and a job every two seconds to the webhook receiver.
    job = create_heartbeat(
        http, system, "tracer-1", url=webhook_receiver.url, secret=webhook_receiver.secret
    )

    # 3. A slot is delivered.
    webhook_receiver.wait_for(
        lambda rs: any(200 <= r.status < 300 and r.verified for r in rs), timeout=60
    )

    # 4. One trace holds the scheduler's publish and the heartbeat's delivery of a slot,
    #    and the delivery's parents lead back to the publish.
    def joined() -> tuple[str, ReceivedSpan, ReceivedSpan, list[ReceivedSpan]] | None:
        delivered = {r.webhook_id for r in webhook_receiver.accepted() if r.webhook_id}
        return _joined_trace(otlp_receiver, delivered)

    try:
        trace_id, publish, deliver, chain = wait_until(
            joined, timeout=60, interval=0.5, what="a trace from slot_due to heartbeat.deliver"
        )
    except TimeoutError:
        summary = sorted(
            {
                (s.service_name, s.name, s.trace_id[:8], s.parent_span_id or "-")
                for s in otlp_receiver.spans
            }
        )
        raise AssertionError(f"no joined trace; spans received: {summary}") from None

    # 5. Both spans are about the same slot of this job, and the chain crosses services.
    slot_key = deliver.attributes["liteclaw.slot_key"]
    assert publish.attributes["liteclaw.slot_key"] == slot_key
    assert publish.attributes["liteclaw.job_id"] == job["job_id"]
    assert slot_key.startswith(job["job_id"] + ":")
    assert deliver.attributes["liteclaw.channel"] == "webhook"
    assert publish.trace_id == deliver.trace_id == trace_id
    assert chain[0] is deliver and chain[-1] is publish
    assert {s.service_name for s in chain} == {SCHEDULER, HEARTBEAT}
    # Resource attributes name each process.
    assert publish.resource.get("service.instance.id")
    assert deliver.resource.get("service.instance.id")
