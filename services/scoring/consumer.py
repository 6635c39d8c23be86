"""The scoring consumer: batches from both event topics → one Postgres transaction
(event-id dedup, window deltas, consumed offsets) → Kafka commit; beside it the
evaluator: pending accounts, oldest first → one transaction (window reads, KPIs,
scores, history) → publish snapshots.

Exactly-once effect: offsets live in Postgres next to the state they produced and
the consumer seeks to them on every assignment, so a batch redelivered after a
crash or rebalance is skipped; client resends are dropped by event id (7 days).
The Kafka commit is only a hint for tools.

Snapshots are published after the commit (at least once): each committed score
row carries ``revision`` and ``scoring_published`` the last revision published; a
snapshot not yet published (crash or broker failure in between) is republished
by the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs published
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from services.scoring import store
from services.scoring.buckets import BatchDeltas, fold
from services.scoring.clock import Clock
from services.scoring.evaluation import Evaluation, Snapshot, evaluate_accounts
from services.scoring.metrics import (
    BATCH_DURATION,
    BATCH_SIZE,
    CONSUMER_LAG,
    EVENT_TO_SCORE,
    EVENTS,
    PENDING_ACCOUNTS,
    REBALANCES,
)
from services.scoring.score_model import ScoreModel
from services.scoring.settings import ScoringSettings
from shared.events import Event, WireError, decode_event, time_problem
from shared.kafka import (
    BrokerMemoryCheck,
    consume_until_stopped,
    dead_letter,
    make_producer,
    send_keyed,
)
from shared.metrics import observe_many

log = logging.getLogger(__name__)
T = TypeVar("T")
IDLE_CHECK_SECONDS = 5.0  # idle this long: ask whether the broker still knows us
# A batch waits at most this long for the one before it to commit while holding its
# claimed event ids, then gives up (Abandoned; re-read): breaks a wait cycle Postgres
# cannot see (another process waiting for those ids while the batch before waits
# for that process).
PREVIOUS_BATCH_WAIT_SECONDS = 30.0
# Events decoded between two yields to the event loop: decoding a batch takes tens
# of ms of CPU, and meanwhile the batch being applied could not send its next
# statement (Postgres idled until the decode was done; +5 % events/s in three A/B
# pairs, 1k accounts).
YIELD_EVERY = 500
MIN_ROUND = 100  # accounts an evaluation round takes at least (when that many wait)


async def in_transaction(
    pool: store.Pool,
    work: Callable[[store.Pg], Awaitable[T]],
    attempts: int = 5,
) -> T:
    """Run ``work`` in one transaction; retried on deadlock / serialization failure
    and on a unique violation (only possible while two processes briefly hold the
    same accounts, or claim the same resent event id at once)."""
    for attempt in range(attempts):
        try:
            async with pool.acquire() as pg, pg.transaction():
                return await work(pg)
        except (
            asyncpg.DeadlockDetectedError,
            asyncpg.SerializationError,
            asyncpg.UniqueViolationError,
        ):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(
        self, consumer: AIOKafkaConsumer, processor: BatchProcessor, check: BrokerMemoryCheck
    ) -> None:
        self.consumer = consumer
        self.processor = processor
        self.pool = processor.pool
        self.check = check

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Batches are applied atomically with their offsets: nothing half-done to
        # flush; the batch being applied finishes first (its errors are the loop's).
        if self.processor.applying is not None:
            await asyncio.wait([self.processor.applying.task])
        for tp in revoked:
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        REBALANCES.inc()
        stored = await load_offsets(self.pool, assigned)
        lost = await self.check.forgotten(stored)
        if lost:
            # Offsets of a log the (embedded) broker no longer has: read the new log
            # from its start; event-id dedup keeps anything read twice from counting.
            log.warning(
                "stored offsets belong to a log the broker lost; reading from the start",
                extra={"partitions": [f"{tp.topic}:{tp.partition}" for tp in lost]},
            )
            await forget_offsets(self.pool, lost)
        for tp in assigned:
            if tp in stored and tp not in lost:
                self.consumer.seek(tp, stored[tp])
        await self.processor.recover_pending()


async def load_offsets(
    pool: store.Pool,
    tps: Sequence[TopicPartition],
) -> dict[TopicPartition, int]:
    if not tps:
        return {}
    rows = await pool.fetch(
        "SELECT topic, partition, next_offset FROM scoring_consumer_offsets"
        " WHERE topic = ANY($1::text[])",
        list({tp.topic for tp in tps}),
    )
    wanted = set(tps)
    out = {TopicPartition(r["topic"], r["partition"]): r["next_offset"] for r in rows}
    return {tp: off for tp, off in out.items() if tp in wanted}


async def forget_offsets(pool: store.Pool, tps: Sequence[TopicPartition]) -> None:
    await pool.execute(
        "DELETE FROM scoring_consumer_offsets"
        " WHERE (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
        [tp.topic for tp in tps],
        [tp.partition for tp in tps],
    )


class Fenced(Exception):
    """Another consumer already stored offsets past the start of this batch (it got
    these partitions in a rebalance and applied them): the batch must not apply."""


class Abandoned(Exception):
    """The batch before this one did not commit (or not in time): this one, fetched
    after it, must not apply either (its transaction rolls back; the consumer
    re-reads from what is stored)."""


async def store_offsets(
    pg: store.Pg, offsets: dict[TopicPartition, int], first: dict[TopicPartition, int]
) -> None:
    """Store the next offsets, fenced: each partition's stored offset must not be past
    the first offset of this batch, or :class:`Fenced` is raised (the caller's
    transaction rolls back, so nothing of the batch is applied twice)."""
    tps = list(offsets)
    rows = await pg.fetch(
        """WITH x AS (
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[])
               AS x(topic, partition, next_offset, first_offset))
           INSERT INTO scoring_consumer_offsets AS t (topic, partition, next_offset)
           SELECT topic, partition, next_offset FROM x
           ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset
           WHERE t.next_offset <= (SELECT x.first_offset FROM x
                                   WHERE x.topic = t.topic AND x.partition = t.partition)
           RETURNING t.topic""",
        [tp.topic for tp in tps],
        [tp.partition for tp in tps],
        [offsets[tp] for tp in tps],
        [first[tp] for tp in tps],
    )
    if len(rows) != len(tps):
        raise Fenced(f"offsets of {len(tps) - len(rows)} partition(s) moved past this batch")


def received_times(events: Iterable[Event]) -> dict[str, Counter[float]]:
    """Per account, how many of ``events`` were received at each time (s): the
    event→score latency is observed from these once the account's score commits.
    Events come in runs of one receive time (ingest stamps a request's events
    alike): each run is converted once (``datetime.timestamp`` costs ~0.5 µs)."""
    out: dict[str, Counter[float]] = {}
    last_at: datetime | None = None
    last = 0.0
    for ev in events:
        at = ev.received_at
        assert at is not None  # decode_event guarantees it
        if at != last_at:
            last_at, last = at, at.timestamp()
        times = out.get(ev.account_id)
        if times is None:
            out[ev.account_id] = Counter({last: 1})
        else:
            times[last] += 1
    return out


def decode(raw: bytes | None) -> Event:
    """:func:`decode_event`: its schema is ingest's, NUL rule included (PostgreSQL
    text cannot store U+0000), and so is its time window, checked against the time
    ingest received the event (not now: a consumer that lags must not refuse what
    ingest accepted). So only what ingest would have refused is dead-lettered — an
    event written to the topic by anything else included: one dated years ahead
    would otherwise break every evaluation of its account."""
    event = decode_event(raw)
    assert event.received_at is not None  # decode_event guarantees it
    problem = time_problem(event, now=event.received_at)
    if problem is not None:
        raise WireError(problem)
    return event


class Pending:
    """Accounts whose windows took events that their score does not show yet, oldest
    first, each with the receive times of those events (for the event→score
    latency). The durable truth is ``applied_seq`` vs ``evaluated_seq`` in Postgres;
    this is the in-process work list, refilled from there on every assignment."""

    def __init__(self) -> None:
        self._accounts: dict[str, Counter[float]] = {}
        # when each account joined the list (monotonic s; 0.0: due at once)
        self._since: dict[str, float] = {}
        # taken by an evaluation round that has not finished (published) yet: not
        # taken again meanwhile, so one account is never evaluated by two rounds
        # at once (the later one would find the first's snapshot not yet recorded
        # as published and publish that revision again)
        self._in_flight: set[str] = set()
        self.changed = asyncio.Event()

    def __len__(self) -> int:
        return len(self._accounts)

    def ready(self) -> bool:
        """Some pending account can be taken (is not in a round already)."""
        return self._oldest_free() is not None

    def _free(self) -> Iterator[str]:
        """The accounts no round holds, longest-waiting first."""
        busy = self._in_flight
        return (a for a in self._accounts if a not in busy)

    def _oldest_free(self) -> str | None:
        """The longest-waiting account that no round holds."""
        return next(self._free(), None)

    def add(self, account: str, received: Iterable[float] | None = None) -> None:
        """``received``: the receive time (s) of each of its events (a Counter: how
        many were received at each time)."""
        held = self._accounts.get(account)
        if held is None:
            self._accounts[account] = Counter(received)
            self._since[account] = time.monotonic()
        elif received:
            held.update(received)
        self.changed.set()

    def take(self, limit: int) -> dict[str, Counter[float]]:
        """The ``limit`` accounts waiting longest that no round holds (removed from
        the list and held until :meth:`release`)."""
        taken = {a: self._accounts[a] for a in itertools.islice(self._free(), limit)}
        for account in taken:
            del self._accounts[account]
            del self._since[account]
        self._in_flight.update(taken)
        return taken

    def share(self, settings: ScoringSettings) -> int:
        """How many accounts a round takes: an equal share of what is pending or
        in flight for each evaluator, at least :data:`MIN_ROUND` (smaller rounds
        would only add round trips), at most ``evaluate_batch``: 1,000 accounts
        due at once, as when a backlog drains, are two rounds of 500 that run
        side by side, not one of 1,000 while the other evaluator idles."""
        busy = len(self._accounts) + len(self._in_flight)
        share = max(MIN_ROUND, -(-busy // settings.evaluators))
        return min(settings.evaluate_batch, share)

    def free_at_least(self, n: int) -> bool:
        """At least ``n`` accounts wait that no round holds."""
        return sum(1 for _ in itertools.islice(self._free(), n)) == n

    def in_flight(self) -> bool:
        """Some round holds accounts (it has not finished and published yet)."""
        return bool(self._in_flight)

    def waited(self, now: float) -> float | None:
        """How long (s) the longest-waiting account that no round holds has been on
        the list (``now``: :func:`time.monotonic`); None when there is none."""
        account = self._oldest_free()
        return None if account is None else now - self._since[account]

    def release(self, accounts: Iterable[str]) -> None:
        """The round that took ``accounts`` is over: they can be taken again."""
        self._in_flight.difference_update(accounts)
        if self._accounts:
            self.changed.set()

    def restore(self, taken: dict[str, Counter[float]]) -> None:
        """Put accounts back at the front (an evaluation that failed or lost a race)."""
        if not taken:
            return
        for account, received in self._accounts.items():
            taken.setdefault(account, Counter()).update(received)
        # back at the front, due at once (they were taken already)
        self._since = {a: self._since.get(a, 0.0) for a in taken}
        self._accounts = taken
        if taken:
            self.changed.set()


@dataclass(frozen=True, slots=True)
class Applying:
    """A batch whose transaction is running."""

    task: asyncio.Task[dict[TopicPartition, int]]
    batch: Prepared


@dataclass(frozen=True, slots=True)
class Prepared:
    """A decoded batch, ready to apply."""

    unique: dict[str, tuple[Event, str]]  # event id → (event, topic), first occurrence
    statements: list[store.Statement]  # the windows' upserts of every unique event
    received: dict[str, Counter[float]]  # per account, its unique events' receive times
    offsets: dict[TopicPartition, int]  # next offset per partition
    first: dict[TopicPartition, int]  # first offset per partition (fencing)
    size: int
    started: float


class BatchProcessor:
    """Applies consumed batches and evaluates the accounts they touched; owns
    nothing but references (pool, producer, clock) and the pending work list.

    Application and evaluation are decoupled: a batch's transaction applies its
    events to the windows with its offsets; the evaluator evaluates pending
    accounts, oldest first, in its own transactions, so an account that takes
    events from several batches meanwhile is evaluated once for all of them."""

    def __init__(
        self,
        settings: ScoringSettings,
        pool: store.Pool,
        producer: AIOKafkaProducer,
        model: ScoreModel,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.producer = producer
        self.model = model
        self.clock = clock
        self.pending = Pending()
        self.published: dict[str, int] = {}  # sent, not yet recorded in Postgres
        self.applying: Applying | None = None
        # the consumer is more than a batch behind its partitions' ends (see
        # evaluation_wait); False when idle, caught up, or shutting down
        self.backlog = False
        self._catching_up: object | None = None  # see set_backlog

    def set_backlog(self, behind: bool) -> None:
        """The consumer's position after a fetch: more than a batch behind or not.
        Catching up wakes the evaluators (what waits is due at once) once the batch
        being applied has committed: it touches most of what is pending again, and
        a round started before it would be followed by a second one right after."""
        self._catching_up = None
        if behind or not self.backlog:
            self.backlog = behind
            return
        applying = self.applying
        if applying is None or applying.task.done():
            self._caught_up()
            return
        token = self._catching_up = object()
        applying.task.add_done_callback(lambda _: self._caught_up(token))

    def _caught_up(self, token: object | None = None) -> None:
        if token is not None and token is not self._catching_up:
            return  # behind again since (or already caught up)
        self._catching_up = None
        self.backlog = False
        self.pending.changed.set()

    def evaluation_wait(self, now: float) -> float | None:
        """Seconds before the next evaluation round may start (0: now; None: nothing
        to take). While the consumer has a backlog, a round waits until its oldest
        account has waited ``backlog_evaluate_interval``: an account that takes
        events from every batch is then evaluated once per interval for all of
        them, not after each batch, and the batches get the CPU (an evaluation
        reads the account's whole windows; at 1,000 accounts it was a third of the
        CPU per event). Without a backlog (caught up, a steady stream, or more than
        ``pending_max_accounts`` waiting, when the consumer stops fetching), at once —
        but while another round is running, a second one starts only for at least
        :data:`MIN_ROUND` accounts (None until then; the running round's end wakes
        the evaluators). At a steady rate a few dozen accounts are touched per batch:
        rounds side by side then split them into small rounds, each paying the
        window read's planning (~6 ms) and its round trips, where one round at a
        time takes what came meanwhile (PostgreSQL's CPU per event at 2,000
        events/s: 212 → 195 and 216 → 192 µs in two A/B pairs)."""
        pending = self.pending
        waited = pending.waited(now)
        if waited is None:
            return None
        if pending.in_flight() and not pending.free_at_least(MIN_ROUND):
            return None
        if not self.backlog or len(pending) > self.settings.pending_max_accounts:
            return 0.0
        return max(0.0, self.settings.backlog_evaluate_interval - waited)

    async def flush_published(self) -> None:
        published, self.published = self.published, {}
        async with self.pool.acquire() as pg:
            await store.mark_published(pg, published)

    async def dead_letter(self, msg: Any, reason: str) -> None:
        await dead_letter(self.producer, self.settings.topics.dlq, msg, reason)

    async def process(self, batches: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, int]:
        """Apply one batch (windows + offsets, one transaction) and add the accounts
        it touched to the pending list; returns the offsets to commit to Kafka."""
        return await self.apply(await self.prepare(batches))

    async def prepare(self, batches: dict[TopicPartition, list[Any]]) -> Prepared:
        """The CPU half of a batch, done while the previous batch is still being
        applied: decode (dead-lettering what cannot be), drop in-batch duplicate
        ids, fold into deltas."""
        started = time.perf_counter()
        events: list[tuple[Event, str]] = []
        offsets: dict[TopicPartition, int] = {}
        first: dict[TopicPartition, int] = {}
        size = 0
        for tp, messages in batches.items():
            for msg in messages:
                size += 1
                if not size % YIELD_EVERY:
                    # let the batch being applied send its next statement meanwhile
                    await asyncio.sleep(0)
                try:
                    events.append((decode(msg.value), tp.topic))
                except WireError as exc:
                    log.warning(
                        "dead-lettered a message",
                        extra={"topic": tp.topic, "offset": msg.offset, "reason": str(exc)},
                    )
                    await self.dead_letter(msg, str(exc))
                    EVENTS.labels(tp.topic, "dead_lettered").inc()
            if messages:
                offsets[tp] = messages[-1].offset + 1
                first[tp] = messages[0].offset
        # First occurrence of an id inside the batch wins; the table catches the rest.
        unique: dict[str, tuple[Event, str]] = {}
        in_batch_duplicates: Counter[str] = Counter()
        for ev, topic in events:
            assert ev.id is not None
            if ev.id in unique:
                in_batch_duplicates[topic] += 1
            else:
                unique[ev.id] = (ev, topic)
        for topic, n in in_batch_duplicates.items():
            EVENTS.labels(topic, "duplicate").inc(n)
        # Folded and encoded in parts, yielding in between: the batch being applied
        # meanwhile is the pipeline's critical path, and each of its statements
        # waits for the event loop once its previous one returns.
        fresh = [ev for ev, _ in unique.values()]
        deltas = BatchDeltas()
        for i in range(0, len(fresh), YIELD_EVERY):
            fold(itertools.islice(fresh, i, i + YIELD_EVERY), into=deltas)
            await asyncio.sleep(0)
        statements = []
        for statement in store.window_statements(deltas):
            statements.append(statement)
            await asyncio.sleep(0)
        return Prepared(unique, statements, received_times(fresh), offsets, first, size, started)

    async def apply(
        self, batch: Prepared, after: Applying | None = None
    ) -> dict[TopicPartition, int]:
        """The database half: one transaction that drops ids seen in earlier batches,
        applies the deltas and stores the offsets (fenced); then the accounts touched
        join the pending list. Returns the offsets to commit to Kafka.

        ``after``: the previous batch, still being applied. This transaction claims
        its event ids meanwhile (other rows: ids of the previous batch are left to
        it), then waits for it and applies the windows only once it committed
        (:class:`Abandoned` if it did not), so the two never contend for a row."""
        unique = batch.unique

        async def work(pg: store.Pg) -> list[tuple[Event, str]]:
            ids = list(unique)
            received = max(  # decode_event guarantees received_at on every event
                (ev.received_at for ev, _ in unique.values() if ev.received_at is not None),
                default=None,
            )
            # An id of the previous batch is a duplicate once it commits (and this
            # batch is abandoned if it does not): never claimed here, so neither
            # transaction ever waits for the other's ids.
            claim = ids if after is None else [i for i in ids if i not in after.batch.unique]
            new = set() if received is None else await store.claim_new_events(pg, claim, received)
            if after is not None:
                await asyncio.wait([after.task], timeout=PREVIOUS_BATCH_WAIT_SECONDS)
                if not after.task.done():
                    raise Abandoned("the batch before this one did not commit in time")
                if after.task.cancelled() or after.task.exception() is not None:
                    raise Abandoned("the batch before this one did not commit")
            if len(new) == len(ids):
                fresh, statements = list(unique.values()), batch.statements
            else:  # client resends of events applied in an earlier batch: fold again
                fresh = [unique[i] for i in ids if i in new]
                statements = list(store.window_statements(fold([ev for ev, _ in fresh])))
            await store.apply_deltas(pg, statements)
            if batch.offsets:
                await store_offsets(pg, batch.offsets, batch.first)
            return fresh

        fresh = await in_transaction(self.pool, work)
        applied = Counter(topic for _, topic in fresh)
        touched = (
            batch.received if len(fresh) == len(unique) else received_times([ev for ev, _ in fresh])
        )
        for account in sorted(touched):
            self.pending.add(account, touched[account])
        if len(fresh) < len(unique):  # seen in an earlier batch (client resend)
            fresh_ids = {ev.id for ev, _ in fresh}
            dup_topics = Counter(t for i, (_, t) in unique.items() if i not in fresh_ids)
            for topic, n in dup_topics.items():
                EVENTS.labels(topic, "duplicate").inc(n)
        for topic, n in applied.items():
            EVENTS.labels(topic, "applied").inc(n)
        BATCH_SIZE.observe(batch.size)
        BATCH_DURATION.observe(time.perf_counter() - batch.started)
        return batch.offsets

    async def evaluate_pending(self) -> int:
        """Evaluate up to ``evaluate_batch`` pending accounts (oldest first) in one
        transaction, then publish their snapshots; returns how many were written.
        Accounts lost to a concurrent evaluation (or the whole round, on an
        error) go back to the front of the list."""
        taken = self.pending.take(self.pending.share(self.settings))
        if not taken:
            return 0
        now = self.clock.now()
        first_received = {a: datetime.fromtimestamp(min(r), UTC) for a, r in taken.items() if r}

        async def work(pg: store.Pg) -> Evaluation:
            await store.mark_published(pg, published)
            return await evaluate_accounts(
                pg,
                list(taken),
                model=self.model,
                as_of=now.astimezone(UTC).date(),
                now=now,
                trigger="events",
                source_received_at=first_received,
            )

        accounts = list(taken)
        published, self.published = self.published, {}
        try:
            try:
                done = await in_transaction(self.pool, work)
            except BaseException:
                self.published = published | self.published
                self.pending.restore(taken)
                raise
            committed = time.time()
            for account in done.written:
                for received, n in taken.pop(account).items():
                    observe_many(EVENT_TO_SCORE, max(0.0, committed - received), n)
            self.pending.restore(taken)  # lost to a concurrent evaluation: again, later
            # Recorded as published inside the next round's transaction (saves a
            # commit per round); if the process dies first, the sweeper republishes.
            self.published.update(
                await send_snapshots(self.producer, self.settings.topics.health, done.snapshots)
            )
            return len(done.written)
        finally:
            self.pending.release(accounts)

    async def recover_pending(self) -> None:
        """Add the accounts whose score lags their windows (left by a crash or by
        the previous owner of a partition) to the pending list."""
        async with self.pool.acquire() as pg:
            for account in await store.pending_accounts(pg):
                self.pending.add(account)


async def run_evaluator(processor: BatchProcessor, done: asyncio.Event) -> None:
    """Evaluate pending accounts as long as there are any; returns once ``done``
    is set and nothing is pending."""
    pending = processor.pending
    while True:
        PENDING_ACCOUNTS.set(len(pending))
        # nothing, only accounts another round holds, too few for a second round,
        # or a backlog to let pass first
        wait = processor.evaluation_wait(time.monotonic())
        if wait is None or wait > 0:
            if processor.published and not pending.in_flight():
                # idle: record what was published meanwhile (while a round runs,
                # the next round's transaction records it, or this once idle)
                await processor.flush_published()
            if done.is_set() and not pending:
                return
            pending.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.changed.wait(), timeout=min(0.2, wait or 0.2))
            continue
        if not await processor.evaluate_pending():
            await asyncio.sleep(0.05)  # every account lost a race: let the winner commit


async def send_snapshots(
    producer: AIOKafkaProducer, topic: str, snapshots: Sequence[Snapshot]
) -> dict[str, int]:
    """Publish committed snapshots; returns {account: revision} of those the broker
    acknowledged ({} on failure, logged: the sweeper republishes what stays
    unpublished)."""
    if not snapshots:
        return {}
    try:
        await send_keyed(producer, topic, [(s.account_id.encode(), s.encode()) for s in snapshots])
    except Exception:
        log.exception("publishing health snapshots failed; the sweeper will retry")
        return {}
    done: dict[str, int] = {}
    for s in snapshots:
        done[s.account_id] = max(done.get(s.account_id, 0), s.revision)
    return done


async def publish(
    pool: store.Pool,
    producer: AIOKafkaProducer,
    topic: str,
    snapshots: Sequence[Snapshot],
) -> None:
    """Publish committed snapshots, then record them as published (own statement)."""
    done = await send_snapshots(producer, topic, snapshots)
    if done:
        async with pool.acquire() as pg:
            await store.mark_published(pg, done)


async def update_lag(consumer: AIOKafkaConsumer) -> int:
    """Set the lag gauges; returns the lag summed over the partitions held."""
    total = 0
    for tp in consumer.assignment():
        high = consumer.highwater(tp)  # end_offsets is wrong on tansu (EMBEDDED.md)
        if high is None:
            continue
        try:
            pos = await consumer.position(tp)
        except Exception:  # partition revoked meanwhile
            continue
        lag = max(0, high - pos)
        CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(lag)
        total += lag
    return total


async def run_consumer(
    settings: ScoringSettings,
    pool: store.Pool,
    producer: AIOKafkaProducer,
    model: ScoreModel,
    clock: Clock,
    stop: asyncio.Event,
) -> None:
    """Consume until ``stop`` is set; finishes the batch in hand and evaluates what
    is pending (at most ``shutdown_evaluate_seconds``), then returns.

    Work in flight is bounded: one batch being applied while the next one is
    decoded and then claims its event ids (its windows are applied only after
    the previous batch committed), and no fetch
    while more than ``pending_max_accounts`` accounts wait for evaluation. A broker
    that lost its state (the embedded one, restarted) gets a fresh consumer
    (:func:`consume_until_stopped`)."""
    processor = BatchProcessor(settings, pool, producer, model, clock)
    evaluated = asyncio.Event()
    evaluators = [
        asyncio.create_task(run_evaluator(processor, evaluated), name=f"evaluator-{i}")
        for i in range(settings.evaluators)
    ]
    evaluator = asyncio.ensure_future(asyncio.gather(*evaluators))

    def subscribe(consumer: AIOKafkaConsumer, check: BrokerMemoryCheck) -> None:
        consumer.subscribe(
            list(settings.topics.events), listener=_SeekToStored(consumer, processor, check)
        )

    async def consume(consumer: AIOKafkaConsumer, check: BrokerMemoryCheck) -> bool:
        async def settle(then: Prepared | None = None) -> None:
            """Start applying ``then`` (its ids are claimed while the batch before it
            finishes), wait for that batch, commit its offsets to Kafka. When it did
            not apply (fenced by a rebalance, or abandoned), ``then`` is abandoned
            with it and the consumer re-reads from the offsets stored."""
            current, processor.applying = processor.applying, None
            if then is not None:
                task = asyncio.create_task(processor.apply(then, after=current))
                processor.applying = Applying(task, then)
            if current is None:
                return
            try:
                offsets = await current.task
            except BaseException as exc:
                follower, processor.applying = processor.applying, None
                if follower is not None:  # rolls back: it came after a batch that did not
                    with contextlib.suppress(Abandoned):
                        await follower.task
                if not isinstance(exc, Fenced | Abandoned):
                    raise
                # Fenced: a rebalance moved these partitions meanwhile and their new
                # owner applied them. Either way: resume from what is stored.
                log.warning("batch not applied; re-seeking", extra={"reason": str(exc)})
                stored = await load_offsets(pool, list(consumer.assignment()))
                for tp, offset in stored.items():
                    consumer.seek(tp, offset)
                unapplied = [current.batch] + ([follower.batch] if follower else [])
                for tp in consumer.assignment():
                    firsts = [b.first[tp] for b in unapplied if tp in b.first]
                    if tp not in stored and firsts:
                        consumer.seek(tp, min(firsts))  # never applied by anyone: from its start
                return
            try:
                await asyncio.wait_for(consumer.commit(offsets), 10)
                check.committed(offsets)
            except Exception as exc:  # offsets are safe in Postgres; commit is a hint
                log.warning("kafka commit failed", extra={"error": str(exc)})

        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                if evaluator.done():
                    evaluator.result()  # raises what stopped it
                    raise RuntimeError("the evaluator stopped")
                if len(processor.pending) > settings.pending_max_accounts:
                    processor.set_backlog(False)
                    await settle()
                    await asyncio.sleep(0.01)  # let the evaluator catch up
                    continue
                batches = await consumer.getmany(
                    timeout_ms=200, max_records=settings.batch_max_events
                )
                if batches and await check.lost_state(batches):
                    return True  # the batch is from a new log: drop it, rebuild
                if batches:
                    idle_since = time.monotonic()
                    # Decode and fold this batch while the previous one is being
                    # applied; it is applied once the previous one has committed.
                    await settle(await processor.prepare(batches))
                else:
                    await settle()
                    if time.monotonic() - idle_since > IDLE_CHECK_SECONDS:
                        idle_since = time.monotonic()
                        if await check.lost_state():
                            return True
                lag = await update_lag(consumer)
                processor.set_backlog(bool(batches) and lag >= settings.batch_max_events)
            return False
        finally:
            processor.set_backlog(False)
            await settle()  # the batch in hand (from before any broker restart)

    try:
        await consume_until_stopped(settings, settings.consumer_group, subscribe, consume, stop)
    finally:
        evaluated.set()
        if not evaluator.done():
            try:
                await asyncio.wait_for(
                    asyncio.shield(evaluator), settings.shutdown_evaluate_seconds
                )
            except TimeoutError:  # what is left stays pending in Postgres for the next owner
                evaluator.cancel()
                log.warning("stopped with accounts still pending evaluation")
        for task in evaluators:  # one failed (gather is done): stop the others too
            task.cancel()
        await asyncio.gather(*evaluators, return_exceptions=True)


def new_producer(settings: ScoringSettings) -> AIOKafkaProducer:
    return make_producer(settings)
