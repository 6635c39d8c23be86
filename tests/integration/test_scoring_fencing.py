"""A batch whose partitions were meanwhile applied by another consumer (rebalance)
is fenced by the stored offsets: nothing of it is applied twice."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from services.scoring import store
from services.scoring.clock import FixedClock
from services.scoring.consumer import BatchProcessor, Fenced, new_producer
from services.scoring.score_model import load_model
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
        kpis = await pool.fetchval("SELECT kpis FROM scoring_scores WHERE account_id = 'fenced'")
        events = await pool.fetchval(
            "SELECT sum(product_events) FROM scoring_account_days WHERE account_id = 'fenced'"
        )
    finally:
        await out.stop()
        await pool.close()
    assert kpis["dau"] == 3
    assert events == 3
