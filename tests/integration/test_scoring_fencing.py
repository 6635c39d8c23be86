"""A batch whose partitions were meanwhile applied by another consumer (rebalance)
is fenced by the stored offsets: nothing of it is applied twice."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.scoring import consumer, store
from services.scoring.clock import FixedClock
from services.scoring.consumer import BatchProcessor, Fenced, new_producer
from services.scoring.evaluation import evaluate_accounts
from services.scoring.score_model import ScoreModel, load_model
from shared.kafka import ensure_topics, make_consumer, make_producer
from tests.integration.scoring_support import settings_from

NOW = datetime(2026, 8, 3, 12, 0, tzinfo=UTC)


async def test_a_batch_applied_by_another_consumer_is_fenced(env: dict[str, str]) -> None:
    settings = settings_from(env)
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for i, user in enumerate(["u1", "u2", "u3"]):
            ev = {
                "id": f"f{i}",
                "type": "login",
                "account_id": "fenced",
                "user_id": user,
                "timestamp": NOW.isoformat(),
                "received_at": NOW.isoformat(),
            }
            await producer.send_and_wait(settings.topics.product, orjson.dumps(ev), key=b"fenced")
    finally:
        await producer.stop()
    reader = make_consumer(settings, "fence-reader", settings.topics.product)
    await reader.start()
    batches: dict = {}
    try:
        for _ in range(100):
            for tp, msgs in (await reader.getmany(timeout_ms=200)).items():
                batches.setdefault(tp, []).extend(msgs)
            if sum(len(m) for m in batches.values()) >= 3:
                break
    finally:
        await reader.stop()
    pool = await store.create_pool(settings.database_url)
    out = new_producer(settings)
    await out.start()
    try:
        # two "consumers" holding the same batch, as around a rebalance
        first = BatchProcessor(settings, pool, out, load_model(), FixedClock(NOW))
        second = BatchProcessor(settings, pool, out, load_model(), FixedClock(NOW))
        await first.process(batches)
        with pytest.raises(Fenced):
            await second.process(batches)
        assert await first.evaluate_pending() == 1
        assert await second.evaluate_pending() == 0  # the fenced batch left nothing pending
        kpis = await pool.fetchval("SELECT kpis FROM scoring_scores WHERE account_id = 'fenced'")
        events = await pool.fetchval(
            "SELECT sum(product_events) FROM scoring_account_days WHERE account_id = 'fenced'"
        )
    finally:
        await out.stop()
        await pool.close()
    assert kpis["dau"] == 3
    assert events == 3


async def _batch_of(settings: Any, events: list[dict[str, Any]]) -> dict[Any, Any]:
    producer = make_producer(settings)
    await producer.start()
    try:
        for ev in events:
            await producer.send_and_wait(
                settings.topics.product, orjson.dumps(ev), key=ev["account_id"].encode()
            )
    finally:
        await producer.stop()
    reader = make_consumer(settings, f"reader-{events[0]['id']}", settings.topics.product)
    await reader.start()
    batches: dict = {}
    try:
        for _ in range(100):
            for tp, msgs in (await reader.getmany(timeout_ms=200)).items():
                batches.setdefault(tp, []).extend(msgs)
            got = [orjson.loads(m.value)["id"] for ms in batches.values() for m in ms]
            if all(ev["id"] in got for ev in events):
                break
    finally:
        await reader.stop()
    wanted = {ev["id"] for ev in events}
    return {
        tp: [m for m in ms if orjson.loads(m.value)["id"] in wanted] for tp, ms in batches.items()
    }


def _login(i: int, account: str, user: str) -> dict[str, Any]:
    return {
        "id": f"{account}-{i}",
        "type": "login",
        "account_id": account,
        "user_id": user,
        "timestamp": NOW.isoformat(),
        "received_at": NOW.isoformat(),
    }


@dataclass
class Rig:
    """What the processor tests share: settings, a pool, a started producer, the model."""

    settings: Any
    pool: Any
    out: Any
    model: ScoreModel

    def processor(self) -> BatchProcessor:
        return BatchProcessor(self.settings, self.pool, self.out, self.model, FixedClock(NOW))


@contextlib.asynccontextmanager
async def _rig(env: dict[str, str]) -> AsyncIterator[Rig]:
    settings = settings_from(env)
    await ensure_topics(settings)
    pool = await store.create_pool(settings.database_url)
    out = new_producer(settings)
    await out.start()
    try:
        yield Rig(settings, pool, out, load_model())
    finally:
        await out.stop()
        await pool.close()


async def test_events_applied_but_not_yet_evaluated_are_found_after_a_crash(
    env: dict[str, str],
) -> None:
    """A batch commits its windows; the process dies before evaluating: the next
    owner finds the account pending in Postgres and its score shows the events."""
    async with _rig(env) as rig:
        pool = rig.pool
        batches = await _batch_of(rig.settings, [_login(i, "crashy", f"u{i}") for i in range(4)])
        dead = rig.processor()
        await dead.process(batches)  # applied; "killed" before its evaluator ran
        assert "crashy" in await store.pending_accounts(pool)
        assert not await pool.fetchval("SELECT 1 FROM scoring_scores WHERE account_id = 'crashy'")

        heir = rig.processor()
        await heir.recover_pending()
        assert await heir.evaluate_pending() >= 1
        kpis = await pool.fetchval("SELECT kpis FROM scoring_scores WHERE account_id = 'crashy'")
        assert kpis["dau"] == 4
        assert "crashy" not in await store.pending_accounts(pool)


async def test_a_stale_evaluation_writes_nothing_over_a_newer_one(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two evaluations of one account race (the evaluator and a sweep, or two
    processes around a rebalance): one that read the account before the other
    committed writes nothing (compare-and-set on the revision it read), so no
    stale score or history row replaces a newer one."""
    async with _rig(env) as rig:
        settings, pool, model = rig.settings, rig.pool, rig.model
        proc = rig.processor()
        await proc.process(await _batch_of(settings, [_login(1, "race", "u1")]))
        assert await proc.evaluate_pending() == 1  # revision 1, dau 1
        async with pool.acquire() as pg:  # evaluation A reads the account now …
            stale = await store.load_states(pg, ["race"], NOW.date(), model.key_features)
        await proc.process(await _batch_of(settings, [_login(2, "race", "u2")]))
        assert await proc.evaluate_pending() == 1  # … B reads later and commits first

        async def read_stale(*_: object) -> list[store.AccountState]:
            return stale

        monkeypatch.setattr(store, "load_states", read_stale)
        async with pool.acquire() as pg, pg.transaction():
            late = await evaluate_accounts(
                pg, ["race"], model=model, as_of=NOW.date(), now=NOW, trigger="sweep"
            )
        assert late.written == set() and late.snapshots == []
        row = await pool.fetchrow(
            "SELECT revision, kpis FROM scoring_scores WHERE account_id = 'race'"
        )
        assert (row["revision"], row["kpis"]["dau"]) == (2, 2)
        history = await pool.fetchval("SELECT kpis FROM scoring_days WHERE account_id = 'race'")
        assert history["dau"] == 2


async def test_an_account_in_an_evaluation_round_waits_for_it_to_finish(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With several evaluators (HEALTHSCORE_EVALUATORS), an account that takes events
    while a round holds it is not taken by a second round meanwhile (the second
    would publish the first's revision again, not yet recorded as published); once
    the first round is over it is evaluated again and its score shows every event,
    each revision published once."""
    accounts = [f"twin{i}" for i in range(5)]
    async with _rig(env) as rig:
        settings, pool = rig.settings, rig.pool
        proc = rig.processor()
        await proc.process(await _batch_of(settings, [_login(1, a, "u1") for a in accounts]))
        sent: list[tuple[str, int]] = []
        real_send = consumer.send_snapshots

        async def send(producer: Any, topic: str, snapshots: Any) -> dict[str, int]:
            sent.extend((s.account_id, s.revision) for s in snapshots)
            return await real_send(producer, topic, snapshots)

        monkeypatch.setattr(consumer, "send_snapshots", send)
        real_load = store.load_states
        held, go = asyncio.Event(), asyncio.Event()

        async def load(*args: Any, **kwargs: Any) -> list[store.AccountState]:
            states = await real_load(*args, **kwargs)
            if not held.is_set():  # the first round: hold it while events arrive
                held.set()
                await go.wait()
            return states

        monkeypatch.setattr(store, "load_states", load)
        first = asyncio.create_task(proc.evaluate_pending())
        await held.wait()
        await proc.process(await _batch_of(settings, [_login(2, a, "u2") for a in accounts]))
        assert len(proc.pending) == len(accounts)
        assert not proc.pending.ready()
        assert await proc.evaluate_pending() == 0  # held by the first round: not taken
        go.set()
        assert await first == len(accounts)  # dau 1, revision 1
        assert proc.pending.ready()
        assert await proc.evaluate_pending() == len(accounts)  # dau 2, revision 2

        rows = await pool.fetch(
            "SELECT account_id, revision, kpis FROM scoring_scores WHERE account_id = ANY($1)",
            accounts,
        )
        assert {r["account_id"]: r["kpis"]["dau"] for r in rows} == dict.fromkeys(accounts, 2)
        assert {r["revision"] for r in rows} == {2}
        assert sorted(sent) == sorted((a, rev) for a in accounts for rev in (1, 2))
        assert not set(accounts) & set(await store.pending_accounts(pool))


def _after(first: dict[Any, Any], later: dict[Any, Any]) -> dict[Any, Any]:
    """The messages of ``later`` past the end of ``first`` (a resend of an id of
    ``first`` is read back with it; keep only the new message)."""
    end = {tp: ms[-1].offset for tp, ms in first.items() if ms}
    return {tp: [m for m in ms if m.offset > end.get(tp, -1)] for tp, ms in later.items()}


async def _product_events(pool: Any, account: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT COALESCE(sum(product_events), 0) FROM scoring_account_days"
            " WHERE account_id = $1",
            account,
        )
    )


async def test_the_next_batch_claims_its_ids_while_the_previous_one_applies(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer applies a batch while the next one claims its event ids. A
    resend of an id of the batch still being applied counts once, and the next
    batch's windows are applied only after the previous one committed."""
    async with _rig(env) as rig:
        settings, pool = rig.settings, rig.pool
        b1 = await _batch_of(settings, [_login(1, "pipe", "u1"), _login(2, "pipe", "u2")])
        b2 = _after(
            b1, await _batch_of(settings, [_login(2, "pipe", "u2"), _login(3, "pipe", "u3")])
        )
        assert sum(len(ms) for ms in b2.values()) == 2
        real_apply, real_claim = store.apply_deltas, store.claim_new_events
        order: list[str] = []
        held, go = asyncio.Event(), asyncio.Event()

        async def apply_deltas(pg: Any, deltas: Any) -> None:
            if not held.is_set():  # the first batch: hold it inside its transaction
                held.set()
                await go.wait()
            order.append("apply")
            await real_apply(pg, deltas)

        async def claim(pg: Any, ids: Any, received: Any) -> set[str]:
            order.append("claim")
            return await real_claim(pg, ids, received)

        monkeypatch.setattr(store, "apply_deltas", apply_deltas)
        monkeypatch.setattr(store, "claim_new_events", claim)
        proc = rig.processor()
        first_batch = await proc.prepare(b1)
        first = consumer.Applying(asyncio.create_task(proc.apply(first_batch)), first_batch)
        await held.wait()
        second = asyncio.create_task(proc.apply(await proc.prepare(b2), after=first))
        for _ in range(200):  # the second batch claims its ids meanwhile …
            if order.count("claim") == 2:
                break
            await asyncio.sleep(0.01)
        assert order == ["claim", "claim"]
        assert not second.done()  # … and waits for the first to commit
        go.set()
        await first.task
        await second
        assert order == ["claim", "claim", "apply", "apply"]
        assert await _product_events(pool, "pipe") == 3  # the resent id counted once
        assert await proc.evaluate_pending() == 1
        kpis = await pool.fetchval("SELECT kpis FROM scoring_scores WHERE account_id = 'pipe'")
        assert kpis["dau"] == 3


async def test_a_batch_after_one_that_did_not_apply_is_abandoned(env: dict[str, str]) -> None:
    """When the batch being applied does not commit (here: fenced, as after a
    rebalance), the next one, already claiming its ids, rolls back with it:
    nothing of it counts until it is read and applied again."""
    async with _rig(env) as rig:
        settings, pool = rig.settings, rig.pool
        b1 = await _batch_of(settings, [_login(1, "gone", "u1")])
        b2 = _after(b1, await _batch_of(settings, [_login(2, "gone", "u2")]))
        await rig.processor().process(b1)  # another consumer applied b1 meanwhile
        proc = rig.processor()
        first_batch = await proc.prepare(b1)
        first = consumer.Applying(asyncio.create_task(proc.apply(first_batch)), first_batch)
        second = asyncio.create_task(proc.apply(await proc.prepare(b2), after=first))
        with pytest.raises(Fenced):
            await first.task
        with pytest.raises(consumer.Abandoned):
            await second
        assert await _product_events(pool, "gone") == 1  # b1 once, nothing of b2
        await rig.processor().process(b2)  # read again: its id was not kept as seen
        assert await _product_events(pool, "gone") == 2


async def test_one_event_id_claimed_by_two_transactions_at_once_counts_once(
    env: dict[str, str],
) -> None:
    """Two consumers (around a rebalance) claim the same resent event id at once:
    the later one waits for the first, is retried once it commits, and then finds
    the id already seen; its other ids are claimed."""
    async with _rig(env) as rig:
        pool = rig.pool
        async with pool.acquire() as first:
            tx = first.transaction()
            await tx.start()
            assert await store.claim_new_events(first, ["both-1"], NOW) == {"both-1"}

            async def claim(pg: Any) -> set[str]:
                return await store.claim_new_events(pg, ["both-1", "both-2"], NOW)

            second = asyncio.create_task(consumer.in_transaction(pool, claim))
            await asyncio.sleep(0.5)
            assert not second.done()  # waits for the first transaction's id
            await tx.commit()
        assert await asyncio.wait_for(second, 10) == {"both-2"}
        stored = await pool.fetchval(
            "SELECT count(*) FROM scoring_processed_events WHERE event_id LIKE 'both-%'"
        )
        assert stored == 2


async def test_a_batch_gives_up_waiting_for_a_stuck_previous_one(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch holds its claimed ids while it waits for the previous one; if that
    takes longer than PREVIOUS_BATCH_WAIT_SECONDS (a wait cycle through another
    process that Postgres cannot see), it rolls back (Abandoned) and releases
    them, and the previous batch still commits."""
    monkeypatch.setattr(consumer, "PREVIOUS_BATCH_WAIT_SECONDS", 0.3)
    async with _rig(env) as rig:
        settings, pool = rig.settings, rig.pool
        b1 = await _batch_of(settings, [_login(1, "stuck", "u1")])
        b2 = _after(b1, await _batch_of(settings, [_login(2, "stuck", "u2")]))
        real_apply = store.apply_deltas
        go = asyncio.Event()

        async def apply_deltas(pg: Any, deltas: Any) -> None:
            if not go.is_set():  # the first batch is stuck until released
                await go.wait()
            await real_apply(pg, deltas)

        monkeypatch.setattr(store, "apply_deltas", apply_deltas)
        proc = rig.processor()
        first_batch = await proc.prepare(b1)
        first = consumer.Applying(asyncio.create_task(proc.apply(first_batch)), first_batch)
        with pytest.raises(consumer.Abandoned):
            await proc.apply(await proc.prepare(b2), after=first)
        claimed = await pool.fetchval(
            "SELECT count(*) FROM scoring_processed_events WHERE event_id = 'stuck-2'"
        )
        assert claimed == 0  # rolled back: the id is free for the batch read again
        go.set()
        await first.task
        assert await _product_events(pool, "stuck") == 1
        await rig.processor().process(b2)
        assert await _product_events(pool, "stuck") == 2


async def test_rounds_racing_over_midnight_keep_each_days_last_evaluation(
    env: dict[str, str],
) -> None:
    """Several evaluation rounds over overlapping accounts, as of the next day, at
    once (the evaluator's rounds and sweeps at midnight): every account ends with
    its earlier day's row in the history exactly as it was, and one current row
    of the new day; rounds that collide wait or retry, none fails."""
    async with _rig(env) as rig:
        pool, model = rig.pool, rig.model
        accounts = [f"mid-{i:02d}" for i in range(24)]
        proc = rig.processor()
        await proc.process(await _batch_of(rig.settings, [_login(1, a, "u1") for a in accounts]))
        while await proc.evaluate_pending():
            pass
        day = NOW.date()
        before = {
            r["account_id"]: r["kpis"]
            for r in await pool.fetch(
                "SELECT account_id, kpis FROM scoring_scores WHERE account_id = ANY($1)", accounts
            )
        }
        assert len(before) == len(accounts)
        later = NOW + timedelta(days=1)
        rnd = random.Random(7)

        async def round_of(ids: list[str]) -> set[str]:
            async def work(pg: store.Pg) -> set[str]:
                done = await evaluate_accounts(
                    pg, ids, model=model, as_of=later.date(), now=later, trigger="sweep"
                )
                return done.written

            return await consumer.in_transaction(pool, work)

        subsets = [rnd.sample(accounts, 12) for _ in range(8)] + [accounts]
        written = await asyncio.gather(*(round_of(ids) for ids in subsets))
        assert set().union(*written) == set(accounts)  # every account written by some round
        rows = await pool.fetch(
            "SELECT account_id, day, kpis FROM scoring_days WHERE account_id = ANY($1)"
            " ORDER BY account_id, day",
            accounts,
        )
        history = await pool.fetch(
            "SELECT account_id, day, kpis FROM scoring_history WHERE account_id = ANY($1)",
            accounts,
        )
    assert {(r["account_id"], r["day"]) for r in rows} == {
        (a, d) for a in accounts for d in (day, later.date())
    }
    assert {r["account_id"]: (r["day"], r["kpis"]) for r in history} == {
        a: (day, before[a]) for a in accounts
    }
