"""Webhook delivery: workers claim due outbox rows, POST them signed, record every
attempt and decide what happens next (delivered, retry later, failed, disabled).

Claiming: ``SELECT … FOR UPDATE SKIP LOCKED`` inside a short transaction that
pushes ``next_attempt_at`` forward by a lease, so several alerts processes never
send the same row at once, and a row whose sender died (kill -9) becomes due again
when the lease runs out. The HTTP request runs outside any transaction.

Deadline and lease: an attempt (resolving the host, connecting, sending, reading
the answer) ends after ``HEALTHSCORE_WEBHOOK_TIMEOUT`` seconds in total, however
slowly the receiver trickles bytes, and reads at most :data:`RESPONSE_READ_LIMIT`
bytes of the answer. The lease is twice that deadline plus 15 s, so the attempt is
over, and normally recorded, long before another worker may claim the row again:
two attempts of one delivery never overlap.

SSRF guard (choice): a custom httpcore network backend, :class:`GuardedBackend`,
resolves the host itself, checks every address (``ssrf.check_addresses``) and
connects to a checked IP. httpx and httpcore above it still see the URL's host
name: connections are pooled per host name, and TLS (SNI and certificate check)
always applies to the URL's host. A DNS answer that changes between check and
connect therefore cannot redirect the request. Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpcore
import httpx
from sqlalchemy import bindparam, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.alerts import metrics, signing, store
from services.alerts.retry import RetryPolicy, parse_retry_after
from services.alerts.settings import AlertsSettings
from services.alerts.ssrf import AllowList, IPAddress, SsrfRefused, check_addresses
from services.alerts.subscriptions import active_secrets
from services.alerts.tables import deliveries, delivery_attempts, subscriptions

log = logging.getLogger(__name__)

USER_AGENT = "Healthscore-Webhooks/1.0"
CLAIM_LINGER = 0.005  # seconds; batches claims and bookkeeping under load
# Bytes of an answer read at most (a receiver's answer is not used beyond its status
# and headers): a short answer is read whole, so its connection is kept alive; a
# longer one is left unread and its connection closed.
RESPONSE_READ_LIMIT = 64 * 1024
# lease = LEASE_FACTOR × deadline + LEASE_MARGIN: the attempt ends at its deadline;
# the rest is time to record the outcome before another worker may claim the row.
LEASE_FACTOR = 2
LEASE_MARGIN = 15.0
Resolver = Callable[[str, int], Awaitable[list[str]]]


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    out: list[str] = []
    for info in infos:
        addr = str(info[4][0])
        if addr not in out:
            out.append(addr)
    return out


def lease_seconds(deadline: float) -> float:
    """How long a claimed row stays leased to its worker, for an attempt deadline."""
    return LEASE_FACTOR * deadline + LEASE_MARGIN


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses.

    ``connect_tcp`` is called by httpcore for each new connection, with the URL's
    host: it resolves it with ``resolver`` (an IP literal is used as it is), refuses
    it with :class:`SsrfRefused` when any address is not allowed, and connects to the
    checked addresses in order until one answers. TLS is started afterwards by
    httpcore on the returned stream, with the URL's host as server name."""

    def __init__(
        self,
        allow: AllowList,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allow = allow
        self.resolver = resolver
        self.inner = inner or httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The checked addresses of ``host`` (SsrfRefused, or httpcore.ConnectError
        when it does not resolve)."""
        try:
            addresses = [str(ipaddress.ip_address(host))]  # an IP literal needs no resolution
        except ValueError:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        return check_addresses(host, addresses, self.allow)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        ips = await self.resolve(host, port)
        failure: Exception | None = None
        for ip in ips:
            try:
                return await self.inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # try the next checked address
        raise failure or httpcore.ConnectError(f"{host}: no address to connect to")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise SsrfRefused(f"unix socket {path}: webhooks connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (no retries, no proxy) over a :class:`GuardedBackend`.

    ``verify``: the TLS trust (tests pass their own certificate authority)."""

    def __init__(
        self,
        allow: AllowList,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(verify=verify, trust_env=False, retries=0, limits=limits)
        # httpx builds its httpcore pool without a way to choose the network backend:
        # the same pool, with ours. The pool is keyed by the URL's (scheme, host, port).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=0,
            network_backend=GuardedBackend(allow, resolver),
        )


def make_client(
    settings: AlertsSettings, resolver: Resolver = system_resolver
) -> httpx.AsyncClient:
    """The one shared client: explicit timeout, no redirects, no proxies from env.
    The per-step timeouts equal the attempt deadline, which :func:`attempt` enforces
    over the whole exchange."""
    return httpx.AsyncClient(
        transport=GuardedTransport(settings.allowlist, resolver=resolver),
        timeout=httpx.Timeout(settings.webhook_timeout),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": USER_AGENT},
    )


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str | None
    duration: float
    retry_after: float | None = None

    @property
    def outcome(self) -> str:
        """delivered | gone | refused | failed (retryable)."""
        if self.status_code is not None and 200 <= self.status_code < 300:
            return "delivered"
        if self.status_code == 410:
            return "gone"
        if self.error and self.error.startswith("refused:"):
            return "refused"
        return "failed"


async def _read_bounded(resp: httpx.Response, limit: int) -> int:
    """Read at most about ``limit`` bytes of the answer (one network read more at
    worst) and return how many were read. A longer answer stays unread: closing the
    response then closes its connection instead of returning it to the pool."""
    read = 0
    # aiter_raw is an async generator (typed as an iterator): close it when we stop
    chunks_ = cast(AsyncGenerator[bytes, None], resp.aiter_raw())
    async with contextlib.aclosing(chunks_) as chunks:
        async for chunk in chunks:
            read += len(chunk)
            if read >= limit:
                break
    return read


async def attempt(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    msg_id: str,
    secrets_: list[str] | None,
    deadline: float | None = None,
) -> AttemptResult:
    """One POST, over within ``deadline`` seconds in total (DNS, connect, request,
    answer; None: the client's read timeout, which :func:`make_client` sets to
    HEALTHSCORE_WEBHOOK_TIMEOUT); at most :data:`RESPONSE_READ_LIMIT` bytes of the
    answer are read. ``secrets_`` None: unsigned (Slack format). Never raises for
    network problems: they are the result."""
    if deadline is None:
        deadline = client.timeout.read or 15.0
    ts = int(time.time())
    headers = {"content-type": "application/json"}
    if secrets_ is not None:
        headers |= signing.headers(secrets_, msg_id, ts, body)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline):
            async with client.stream("POST", url, content=body, headers=headers) as resp:
                await _read_bounded(resp, RESPONSE_READ_LIMIT)
    except SsrfRefused as exc:
        return AttemptResult(None, f"refused: {exc}", time.perf_counter() - started)
    except TimeoutError:  # the deadline (before OSError: TimeoutError is one)
        duration = time.perf_counter() - started
        metrics.ATTEMPT_DURATION.observe(duration)
        return AttemptResult(None, f"timeout: no complete answer within {deadline:g} s", duration)
    except httpx.TimeoutException as exc:
        duration = time.perf_counter() - started
        metrics.ATTEMPT_DURATION.observe(duration)
        return AttemptResult(None, f"timeout: {type(exc).__name__}", duration)
    except (httpx.HTTPError, OSError) as exc:
        duration = time.perf_counter() - started
        metrics.ATTEMPT_DURATION.observe(duration)
        return AttemptResult(None, f"{type(exc).__name__}: {exc}"[:500], duration)
    duration = time.perf_counter() - started
    metrics.ATTEMPT_DURATION.observe(duration)
    error = None
    if not 200 <= resp.status_code < 300:
        error = f"HTTP {resp.status_code}"
        if 300 <= resp.status_code < 400:
            error += f" (redirect to {resp.headers.get('location', '?')} not followed)"
    retry_after = parse_retry_after(resp.headers.get("retry-after"), datetime.now(UTC))
    return AttemptResult(resp.status_code, error, duration, retry_after)


class DeliveryWorker:
    """Claims due outbox rows and delivers them, at most ``concurrency`` attempts in
    flight. A slot frees as soon as its HTTP exchange ends; outcomes are written by
    one recorder task in batches (one transaction for whatever finished meanwhile)."""

    def __init__(
        self,
        settings: AlertsSettings,
        engine: AsyncEngine,
        client: httpx.AsyncClient,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client
        self.policy: RetryPolicy = settings.retry_policy
        self.wake = wake or asyncio.Event()
        self.lease = timedelta(seconds=lease_seconds(settings.webhook_timeout))

    async def listen(self, stop: asyncio.Event) -> None:
        """LISTEN for outbox notifications (rows added by any process, replays from the
        API) and wake the loop. Best effort: without it the poll interval still applies.
        Holds one pooled connection while running."""

        def wake(*_: object) -> None:
            self.wake.set()

        try:
            async with self.engine.connect() as conn:
                raw = await conn.get_raw_connection()
                pg: Any = raw.driver_connection  # the asyncpg connection
                await pg.add_listener(store.OUTBOX_CHANNEL, wake)
                try:
                    await stop.wait()
                finally:
                    await pg.remove_listener(store.OUTBOX_CHANNEL, wake)
        except Exception as exc:  # polling still works
            log.warning("outbox LISTEN unavailable; polling only", extra={"reason": str(exc)})

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; in-flight attempts finish first."""
        listener = asyncio.create_task(self.listen(stop))
        try:
            await self._run(stop)
        finally:
            listener.cancel()
            with contextlib.suppress(BaseException):
                await listener

    async def _run(self, stop: asyncio.Event) -> None:
        attempts: set[asyncio.Task[None]] = set()
        results: asyncio.Queue[tuple[dict[str, Any], AttemptResult]] = asyncio.Queue()
        recorder = asyncio.create_task(self._record_results(results))
        last_gauge = 0.0
        try:
            while not stop.is_set():
                self.wake.clear()
                free = self.settings.delivery_concurrency - len(attempts)
                claimed = await self.claim(free) if free > 0 else []
                for row in claimed:
                    task = asyncio.create_task(self._attempt_into(row, results))
                    attempts.add(task)
                    task.add_done_callback(attempts.discard)
                if time.monotonic() - last_gauge > 5:
                    last_gauge = time.monotonic()
                    with contextlib.suppress(Exception):
                        async with self.engine.connect() as conn:
                            metrics.OUTBOX_PENDING.set(await store.pending_count(conn))
                if attempts and len(claimed) >= free:
                    # Full: wait for a slot, then claim again (more may be due). The
                    # short linger lets a few more finish, so claims come in batches.
                    await asyncio.wait(set(attempts), return_when="FIRST_COMPLETED")
                    await asyncio.sleep(CLAIM_LINGER)
                    continue
                waiters: list[asyncio.Future[Any]] = [
                    asyncio.ensure_future(self.wake.wait()),
                    asyncio.ensure_future(stop.wait()),
                ]
                await asyncio.wait(
                    waiters,
                    timeout=self.settings.delivery_poll_interval,
                    return_when="FIRST_COMPLETED",
                )
                for w in waiters:
                    w.cancel()
            if attempts:
                await asyncio.wait(attempts, timeout=self.settings.webhook_timeout + 5)
        finally:
            await results.join()  # every finished attempt is recorded before we return
            recorder.cancel()
            with contextlib.suppress(BaseException):
                await recorder

    async def _attempt_into(
        self, row: dict[str, Any], results: asyncio.Queue[tuple[dict[str, Any], AttemptResult]]
    ) -> None:
        try:
            result = await self._attempt(row)
        except Exception:
            log.exception("webhook attempt crashed", extra={"delivery_id": row["id"]})
            return  # the lease runs out and the row is tried again
        if result is not None:
            results.put_nowait((row, result))

    async def _record_results(
        self, results: asyncio.Queue[tuple[dict[str, Any], AttemptResult]]
    ) -> None:
        """Write finished attempts in batches (whatever has finished meanwhile), so an
        attempt's slot is free as soon as its HTTP exchange ends."""
        while True:
            batch = [await results.get()]
            await asyncio.sleep(CLAIM_LINGER)  # gather what finishes meanwhile: fewer commits
            while not results.empty() and len(batch) < 500:
                batch.append(results.get_nowait())
            try:
                await self.record(batch)
            except Exception:  # the rows' leases run out and they are tried again
                log.exception("recording webhook attempts failed", extra={"count": len(batch)})
            finally:
                for _ in batch:
                    results.task_done()

    async def claim(self, limit: int) -> list[dict[str, Any]]:
        """Due rows (with their subscription), leased to this worker."""
        async with self.engine.begin() as conn:
            rows = (
                (
                    await conn.execute(
                        text(
                            """
                            UPDATE webhook_deliveries d
                               SET next_attempt_at = now() + make_interval(secs => :lease)
                              FROM (SELECT id FROM webhook_deliveries
                                     WHERE status = 'pending' AND next_attempt_at <= now()
                                     ORDER BY next_attempt_at
                                     LIMIT :limit
                                     FOR UPDATE SKIP LOCKED) due,
                                   webhook_subscriptions s
                             WHERE d.id = due.id AND s.id = d.subscription_id
                         RETURNING d.id, d.subscription_id, d.payload, d.attempts, d.created_at,
                                   s.url, s.format, s.enabled, s.secret, s.previous_secret,
                                   s.previous_secret_expires_at
                            """
                        ),
                        {"lease": self.lease.total_seconds(), "limit": limit},
                    )
                )
                .mappings()
                .all()
            )
        return [dict(r) for r in rows]

    async def _attempt(self, row: dict[str, Any]) -> AttemptResult | None:
        """One attempt, or None (after marking the row) when its subscription is disabled."""
        if not row["enabled"]:
            async with self.engine.begin() as conn:
                await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id == row["id"], deliveries.c.status == "pending")
                    .values(status="disabled", last_error="subscription disabled")
                )
            return None
        now = datetime.now(UTC)
        secrets_ = (
            None
            if row["format"] == "slack"
            else active_secrets(
                row["secret"], row["previous_secret"], row["previous_secret_expires_at"], now
            )
        )
        return await attempt(
            self.client,
            row["url"],
            bytes(row["payload"]),
            row["id"],
            secrets_,
            deadline=self.settings.webhook_timeout,
        )

    async def deliver(self, row: dict[str, Any]) -> AttemptResult | None:
        """Attempt one row now and record the outcome (the test endpoint uses it)."""
        result = await self._attempt(row)
        if result is not None:
            await self.record([(row, result)])
        return result

    async def record(self, done: list[tuple[dict[str, Any], AttemptResult]]) -> None:
        """Store the attempts and the deliveries' next states in one transaction."""
        if not done:
            return
        now = datetime.now(UTC)
        attempts_rows = []
        updates = []
        gone: set[str] = set()
        outcomes = []
        for row, result in done:
            number = row["attempts"] + 1
            outcome = result.outcome
            values: dict[str, Any] = {
                "b_id": row["id"],
                "b_attempts": number,
                "b_last_error": result.error,
                "b_status": "pending",
                "b_delivered_at": None,
                "b_next_attempt_at": now,
            }
            if outcome == "delivered":
                values |= {"b_status": "delivered", "b_delivered_at": now}
            elif outcome == "gone":
                values["b_status"] = "disabled"
                gone.add(row["subscription_id"])
            elif outcome == "refused":
                values["b_status"] = "failed"
            else:
                delay = self.policy.next_delay(number, result.retry_after)
                if delay is None:
                    values["b_status"] = "failed"
                else:
                    values["b_next_attempt_at"] = now + timedelta(seconds=delay)
                    outcome = "failed_retrying"
            updates.append(values)
            outcomes.append((row, number, outcome, result))
            attempts_rows.append(
                {
                    "delivery_id": row["id"],
                    "attempt": number,
                    "attempted_at": now,
                    "status_code": result.status_code,
                    "error": result.error,
                    "duration_seconds": result.duration,
                }
            )
        async with self.engine.begin() as conn:
            await conn.execute(delivery_attempts.insert(), attempts_rows)
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == bindparam("b_id"), deliveries.c.status == "pending")
                .values(
                    attempts=bindparam("b_attempts"),
                    last_error=bindparam("b_last_error"),
                    status=bindparam("b_status"),
                    delivered_at=bindparam("b_delivered_at"),
                    next_attempt_at=bindparam("b_next_attempt_at"),
                ),
                updates,
            )
            for sub_id in gone:
                await conn.execute(
                    update(subscriptions)
                    .where(subscriptions.c.id == sub_id)
                    .values(
                        enabled=False,
                        disabled_reason=f"410 Gone from the receiver at {now.isoformat()}",
                        updated_at=now,
                    )
                )
                await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.subscription_id == sub_id, deliveries.c.status == "pending")
                    .values(status="disabled", last_error="subscription disabled (410 Gone)")
                )
        for row, number, outcome, result in outcomes:
            metrics.DELIVERIES.labels(outcome).inc()
            if outcome == "delivered":
                metrics.ALERT_TO_DELIVERY.observe((now - row["created_at"]).total_seconds())
            else:
                log.info(
                    "webhook attempt failed",
                    extra={
                        "delivery_id": row["id"],
                        "attempt": number,
                        "outcome": outcome,
                        "error": result.error,
                    },
                )


async def load_delivery_row(engine: AsyncEngine, delivery_id: str) -> dict[str, Any] | None:
    """A delivery joined with its subscription (the row shape ``DeliveryWorker.deliver`` takes)."""
    q = (
        select(
            deliveries.c.id,
            deliveries.c.subscription_id,
            deliveries.c.payload,
            deliveries.c.attempts,
            deliveries.c.created_at,
            subscriptions.c.url,
            subscriptions.c.format,
            subscriptions.c.enabled,
            subscriptions.c.secret,
            subscriptions.c.previous_secret,
            subscriptions.c.previous_secret_expires_at,
        )
        .join(subscriptions, subscriptions.c.id == deliveries.c.subscription_id)
        .where(deliveries.c.id == delivery_id)
    )
    async with engine.connect() as conn:
        row = (await conn.execute(q)).mappings().first()
    return dict(row) if row else None
