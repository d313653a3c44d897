"""Real HTTP receivers for end-to-end tests, each on 127.0.0.1 in a background thread.

* ``WebhookReceiver`` records every request and verifies its Standard Webhooks signature
  with ``standardwebhooks.Webhook(secret).verify``. It answers from a configurable sequence
  of status codes (e.g. ``[500, 429, 200]``: the first request gets 500, the second 429,
  every later one 200), so fault tests can make deliveries fail transiently.
* ``OtlpReceiver`` accepts OTLP/HTTP protobuf exports on ``POST /v1/traces`` and keeps the
  decoded spans.

Both are context managers; the pytest fixtures ``webhook_receiver`` and ``otlp_receiver``
(import them into a test module or a conftest) start and stop them around one test.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from standardwebhooks import Webhook


def new_webhook_secret() -> str:
    """A fresh Standard Webhooks secret, ``whsec_<base64 of 24 random bytes>``."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class _QuietHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)


class _BackgroundServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port>, served from a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._handler = handler
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler)
        server.daemon_threads = True
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


# --- webhooks -------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    received_at: float  # time.time()
    status: int  # what the receiver answered
    verified: bool
    verify_error: str | None
    payload: Any  # parsed JSON body, or None

    @property
    def webhook_id(self) -> str | None:
        return self.headers.get("webhook-id")


class _WebhookHandler(_QuietHandler):
    def do_POST(self) -> None:
        receiver: WebhookReceiver = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status = receiver._record(self.command, self.path, headers, body)
        # 204 and 304 have no body (RFC 9110); a strict client rejects one that has.
        body = b"" if status in (204, 304) else json.dumps({"status": status}).encode()
        self._answer(status, body, "application/json")

    do_PUT = do_POST


class WebhookReceiver(_BackgroundServer):
    def __init__(self, secret: str | None = None, statuses: Iterable[int] = ()) -> None:
        super().__init__(_WebhookHandler)
        self.secret = secret or new_webhook_secret()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._requests: list[WebhookRequest] = []
        self._statuses: list[int] = list(statuses)
        self.default_status = 200

    @property
    def url(self) -> str:
        return self.base_url + "/hook"

    def set_statuses(self, statuses: Iterable[int], default: int | None = None) -> None:
        """Answer the next requests with ``statuses`` in order, then ``default``."""
        with self._lock:
            self._statuses = list(statuses)
            if default is not None:
                self.default_status = default

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        try:
            payload = Webhook(self.secret).verify(body, headers)
            verified, error = True, None
        except Exception as exc:  # record, never raise into the server thread
            verified, error = False, f"{type(exc).__name__}: {exc}"
            try:
                payload = json.loads(body)
            except ValueError:
                payload = None
        with self._changed:
            status = self._statuses.pop(0) if self._statuses else self.default_status
            self._requests.append(
                WebhookRequest(
                    method, path, headers, body, time.time(), status, verified, error, payload
                )
            )
            self._changed.notify_all()
        return status

    @property
    def requests(self) -> list[WebhookRequest]:
        with self._lock:
            return list(self._requests)

    def accepted(self) -> list[WebhookRequest]:
        """Requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(
        self, predicate: Callable[[list[WebhookRequest]], bool], timeout: float
    ) -> list[WebhookRequest]:
        """Block until ``predicate(requests)`` holds; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._requests)):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"webhook receiver: condition not met after {timeout}s; "
                        f"{len(self._requests)} requests received"
                    )
                self._changed.wait(min(left, 0.5))
            return list(self._requests)

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- OTLP traces ----------------------------------------------------------------------


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _any_value(kv.value) for kv in kvs}


@dataclass(frozen=True)
class ReceivedSpan:
    service_name: str | None
    name: str
    trace_id: str  # 32 hex digits
    span_id: str  # 16 hex digits
    parent_span_id: str | None  # 16 hex digits, None for a root span
    kind: int
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)


class _OtlpHandler(_QuietHandler):
    def do_POST(self) -> None:
        receiver: OtlpReceiver = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        if self.path.split("?")[0] != "/v1/traces":
            self._answer(404, b"not found")
            return
        if "json" in (self.headers.get("content-type") or ""):
            self._answer(415, b"only application/x-protobuf")
            return
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception:
            self._answer(400, b"bad protobuf")
            return
        receiver._add(request)
        self._answer(
            200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf"
        )


class OtlpReceiver(_BackgroundServer):
    def __init__(self) -> None:
        super().__init__(_OtlpHandler)
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        self.exports = 0

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return self.base_url

    def _add(self, request: ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    spans.append(
                        ReceivedSpan(
                            service_name=resource.get("service.name"),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex() or None,
                            kind=span.kind,
                            attributes=_attributes(span.attributes),
                            resource=resource,
                        )
                    )
        with self._lock:
            self._spans.extend(spans)
            self.exports += 1

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def traces(self) -> dict[str, list[ReceivedSpan]]:
        by_trace: dict[str, list[ReceivedSpan]] = {}
        for span in self.spans:
            by_trace.setdefault(span.trace_id, []).append(span)
        return by_trace

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def webhook_receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver
