"""One webhook attempt against real local HTTP servers (no database): the attempt's
overall deadline against a receiver that trickles its answer, the bounded read of a
huge answer, keep-alive, and TLS checked against the URL's host name even when two
names share one address. Every server binds 127.0.0.1 on a free port; resolution of
the test names is faked, so no traffic leaves the machine."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from services.alerts.delivery import GuardedTransport, attempt
from services.alerts.ssrf import AllowList

LOCAL = AllowList.parse("127.0.0.1/32")
Writer = Callable[[asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    """HTTP/1.1 with keep-alive; ``answer`` writes the response to each request."""

    answer: Writer
    ssl_ctx: ssl.SSLContext | None = None
    port: int = 0
    connections: int = 0
    requests: list[str] = field(default_factory=list)  # Host header of each
    # (webhook-id, monotonic time the request was read, time its exchange ended)
    spans: list[tuple[str, float, float]] = field(default_factory=list)
    bytes_sent: int = 0  # body bytes the answers got into the socket
    closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None

    async def start(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.ssl_ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, v in (line.split(":", 1) for line in head.split("\r\n")[1:] if line)
                )
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append(headers.get("host", ""))
                span = (headers.get("webhook-id", ""), time.monotonic())
                try:
                    await self.answer(writer)
                    await writer.drain()
                finally:
                    self.spans.append((*span, time.monotonic()))
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_client.set()  # the client went away (reset, or closed)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(answer: Writer, ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = await Server(answer, ssl_ctx).start()
    try:
        yield server
    finally:
        await server.stop()


def client(verify: ssl.SSLContext | bool = True, timeout: float = 30) -> httpx.AsyncClient:
    async def to_loopback(_host: str, _port: int) -> list[str]:
        return ["127.0.0.1"]

    return httpx.AsyncClient(
        transport=GuardedTransport(LOCAL, resolver=to_loopback, verify=verify),
        timeout=timeout,  # per network step; the attempt's deadline is shorter
        follow_redirects=False,
        trust_env=False,
    )


async def ok(writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


def trickling(length: int = 100, every: float = 0.2) -> Writer:
    """A 200 whose headers come at once and whose body comes one byte every ``every`` s."""

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % length)
        for _ in range(length):
            await writer.drain()
            await asyncio.sleep(every)
            writer.write(b"x")

    return trickle


async def test_a_trickling_receiver_fails_at_the_deadline() -> None:
    """Headers at once, then one byte every 0.2 s: no network step ever waits long,
    yet the attempt ends at its deadline, as a timeout (retried), not delivered."""

    async with serving(trickling()) as server, client() as c:
        started = time.monotonic()
        result = await attempt(
            c, f"http://hooks.test:{server.port}/", b"{}", "msg_t", None, deadline=1.0
        )
        elapsed = time.monotonic() - started
        assert result.outcome == "failed" and result.status_code is None
        assert result.error is not None and result.error.startswith("timeout")
        assert 1.0 <= elapsed < 2.0, elapsed
        await asyncio.wait_for(server.closed_by_client.wait(), 5)  # the connection is dropped


async def test_a_slow_connect_or_answer_counts_against_the_same_deadline() -> None:
    """Resolution is part of the attempt: a resolver that hangs ends at the deadline."""

    async def hanging(_host: str, _port: int) -> list[str]:
        await asyncio.sleep(30)
        return ["127.0.0.1"]

    c = httpx.AsyncClient(transport=GuardedTransport(LOCAL, resolver=hanging), timeout=30)
    async with c:
        started = time.monotonic()
        result = await attempt(c, "http://slow-dns.test/", b"{}", "msg_d", None, deadline=0.5)
    assert result.error is not None and result.error.startswith("timeout")
    assert time.monotonic() - started < 1.5


async def test_a_huge_answer_is_delivered_without_being_read() -> None:
    """A 2xx whose body never ends: delivered at once, after reading at most
    delivery.RESPONSE_READ_LIMIT (64 KiB) (and what the sockets buffer), then the connection is
    closed. Reading it whole would run into the deadline, then fail."""
    chunk = b"y" * (1 << 20)

    async def endless(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        while True:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()  # raises once the client has closed
            server.bytes_sent += len(chunk)

    async with serving(endless) as server, client() as c:
        started = time.monotonic()
        result = await attempt(c, f"http://big.test:{server.port}/", b"{}", "msg_b", None, 10.0)
        assert result.outcome == "delivered", result
        assert time.monotonic() - started < 5
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
    # what the server could push before the client closed: the bounded read plus the
    # kernel's socket buffers (a few MiB on loopback), never the whole stream
    assert server.bytes_sent < 32 * (1 << 20), server.bytes_sent


async def test_short_answers_keep_the_connection_alive() -> None:
    async with serving(ok) as server, client() as c:
        for n in range(3):
            result = await attempt(c, f"http://keep.test:{server.port}/", b"{}", f"m{n}", None)
            assert result.outcome == "delivered"
    assert (server.connections, len(server.requests)) == (1, 3)


# --- TLS: pooled and checked per host name ---------------------------------------


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for a.test only, client context trusting its CA)."""
    from cryptography import x509  # a dev dependency (pyproject.toml)
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(name: str, signer: Any, issuer: Any) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer or subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=signer is None, path_length=None), True)
        )
        if signer is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False
            )
        return key, builder.sign(signer or key, hashes.SHA256())

    ca_key, ca = cert("test CA", None, None)
    leaf_key, leaf = cert("a.test", ca_key, ca.subject)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pem = serialization.Encoding.PEM
    with tempfile.TemporaryDirectory() as d:
        with open(f"{d}/leaf.pem", "wb") as f:
            f.write(leaf.public_bytes(pem))
        with open(f"{d}/key.pem", "wb") as f:
            f.write(
                leaf_key.private_bytes(
                    pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
        server.load_cert_chain(f"{d}/leaf.pem", f"{d}/key.pem")
    trusting = ssl.create_default_context(cadata=ca.public_bytes(pem).decode())
    return server, trusting


async def test_tls_is_checked_against_each_host_name_even_on_one_address() -> None:
    """a.test and b.test resolve to the same address; the certificate is a.test's.
    After a request to a.test, a request to b.test must not travel over a.test's
    pooled connection: it gets a connection of its own, whose check fails."""
    server_ctx, trusting = _tls_contexts()
    async with serving(ok, server_ctx) as server, client(verify=trusting) as c:
        a = await attempt(c, f"https://a.test:{server.port}/", b"{}", "m1", None, 5.0)
        assert a.outcome == "delivered", a
        b = await attempt(c, f"https://b.test:{server.port}/", b"{}", "m2", None, 5.0)
        assert b.outcome == "failed" and b.error is not None
        assert "CERTIFICATE_VERIFY_FAILED" in b.error or "certificate" in b.error.lower()
        again = await attempt(c, f"https://a.test:{server.port}/", b"{}", "m3", None, 5.0)
        assert again.outcome == "delivered"
    assert server.requests == [f"a.test:{server.port}"] * 2  # b.test's payload never sent
    # one TLS session completed, a.test's, reused; b.test's handshake failed on our side
    assert server.connections == 1
