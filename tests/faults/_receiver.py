"""A fast webhook receiver for the fault tests, run as its own process
(``python -m tests.faults._receiver --port P --secret S [--delay D]``).

The threaded receiver in ``tests/support/receivers.py`` is right for a few requests; a
burst of thousands needs something cheaper that does not share the test's interpreter.
This one is an asyncio HTTP/1.1 protocol (keep-alive, no framework), like
``bench/receiver.py``, but it also verifies every request's Standard Webhooks signature
(``standardwebhooks.Webhook(secret).verify``). With ``--delay`` it holds each answer that
many seconds, so deliveries stay in flight long enough for a kill to land among them.

``GET /count`` answers ``{"requests": n, "keys": k}``; ``GET /stats`` answers
``{"seen": {webhook-id: count}, "bad": [reasons of failed verifications]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from standardwebhooks import Webhook


class Receiver(asyncio.Protocol):
    webhook: Webhook
    delay: float = 0.0
    seen: dict[str, int] = {}
    bad: list[str] = []
    requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            lines = head.split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            body = self.buffer[head_end + 4 : end]
            self.buffer = self.buffer[end:]
            self.handle(lines[0], headers, body)

    def _write(self, status: str, body: bytes = b"") -> None:
        if self.transport.is_closing():
            return
        self.transport.write(
            f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )

    def handle(self, request_line: str, headers: dict[str, str], body: bytes) -> None:
        cls = type(self)
        if request_line.startswith("GET /count"):
            answer = {"requests": cls.requests, "keys": len(cls.seen)}
            self._write("200 OK", json.dumps(answer).encode())
            return
        if request_line.startswith("GET /stats"):
            self._write("200 OK", json.dumps({"seen": cls.seen, "bad": cls.bad}).encode())
            return
        key = headers.get("webhook-id", "")
        try:
            cls.webhook.verify(body, headers)
        except Exception as exc:
            cls.bad.append(f"{key}: {type(exc).__name__}: {exc}")
        cls.requests += 1
        cls.seen[key] = cls.seen.get(key, 0) + 1
        if cls.delay > 0:
            asyncio.get_running_loop().call_later(cls.delay, self._write, "204 No Content")
        else:
            self._write("204 No Content")


async def main(port: int, secret: str, delay: float) -> None:
    Receiver.webhook = Webhook(secret)
    Receiver.delay = delay
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="fault-test webhook receiver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    asyncio.run(main(args.port, args.secret, args.delay))
