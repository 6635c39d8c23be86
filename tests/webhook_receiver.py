"""A tiny real HTTP/1.1 receiver for webhook tests and the alerts benchmark (aiohttp
is not installed). Runs on the caller's event loop, on 127.0.0.1 and a free port;
connections are kept alive. ``behaviour(n, request)`` decides the answer
to the n-th request (1-based)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from shared.embedded import free_port


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() when fully read


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a slow receiver)


Behaviour = Callable[[int, Received], Answer]


def always(status: int = 200, **headers: str) -> Behaviour:
    return lambda _n, _r: Answer(status, dict(headers))


def fail_then_succeed(failures: int, status: int = 500) -> Behaviour:
    return lambda n, _r: Answer(status if n <= failures else 200)


@dataclass
class Receiver:
    behaviour: Behaviour = field(default_factory=always)
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Receiver:
        self.port = self.port or free_port()
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def wait_for(self, count: int, timeout: float = 60) -> list[Received]:
        """Wait until at least ``count`` requests arrived (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"got {len(self.requests)} of {count} requests in {timeout}s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, 0.5))
        return self.requests

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 with keep-alive, as real receivers do."""
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Received(method, path, headers, body, time.time())
                self.requests.append(req)
                self._arrived.set()
                answer = self.behaviour(len(self.requests), req)
                if answer.delay:
                    await asyncio.sleep(answer.delay)
                extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
                writer.write(
                    f"HTTP/1.1 {answer.status} X\r\ncontent-length: 0\r\n{extra}\r\n".encode()
                )
                await writer.drain()
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()


async def _serve_to_file(port: int, fh: TextIO) -> None:
    """Receiver in its own process (benchmarks): one JSON line per request
    ({"at", "webhook_id", "body"}) appended to ``out``; answers 200."""
    import json
    import signal

    receiver = Receiver(port=port)

    def behaviour(_n: int, req: Received) -> Answer:
        fh.write(
            json.dumps(
                {
                    "at": req.at,
                    "webhook_id": req.headers.get("webhook-id"),
                    "body": req.body.decode(),
                }
            )
            + "\n"
        )
        receiver.requests.clear()  # keep memory flat; the file is the record
        return Answer(200)

    receiver.behaviour = behaviour
    await receiver.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await receiver.stop()


if __name__ == "__main__":
    import sys

    with open(sys.argv[2], "a", buffering=1) as out:
        asyncio.run(_serve_to_file(int(sys.argv[1]), out))
