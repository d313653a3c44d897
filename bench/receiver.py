"""A minimal, fast HTTP/1.1 webhook receiver for benchmarks (keep-alive, asyncio
protocol, no framework), run as its own process so it does not share an event loop with
the measuring code. It records the first arrival time and the count of every
`webhook-id`; `GET /stats` returns them as JSON, and `GET /count` only how many keys and
requests it has seen, which is what the benchmark polls while it waits (serialising every
key once a second would steal CPU from the system under test).

Signatures are not verified here (the test suite does that); this peer only has to be
cheaper than the system it measures (it shares the machine's two cores with it, where a
real receiver would run elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


class Receiver(asyncio.Protocol):
    seen: dict[str, list[float]] = {}

    connections = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        Receiver.connections += 1

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
            if len(self.buffer) < head_end + 4 + length:
                return
            self.buffer = self.buffer[head_end + 4 + length :]
            self.handle(lines[0], headers)

    requests = 0

    def handle(self, request_line: str, headers: dict[str, str]) -> None:
        if request_line.startswith("GET /"):
            if request_line.startswith("GET /count"):
                counts = {
                    "keys": len(self.seen),
                    "requests": Receiver.requests,
                    "connections": Receiver.connections,
                }
                body = json.dumps(counts).encode()
            else:
                body = json.dumps(self.seen).encode()
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
            return
        Receiver.requests += 1
        key = headers.get("webhook-id", "")
        entry = self.seen.get(key)
        if entry is None:
            self.seen[key] = [time.time(), 1]
        else:
            entry[1] += 1
        self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Receiver, "127.0.0.1", port, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="benchmark webhook receiver")
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    try:
        # The services run on uvloop; so does their stand-in peer, to stay cheap.
        import uvloop

        uvloop.run(main(port))
    except ImportError:
        asyncio.run(main(port))
