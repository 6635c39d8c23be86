"""When the evaluator may start a round (consumer.BatchProcessor.evaluation_wait):
at once without a backlog; under a backlog once the longest-waiting account has
waited ``backlog_evaluate_interval``; at once again when the consumer catches up."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from services.scoring.consumer import MIN_ROUND, Applying, BatchProcessor
from services.scoring.settings import ScoringSettings


def _processor(**kw: Any) -> BatchProcessor:
    settings = ScoringSettings(backlog_evaluate_interval=2.0, **kw)
    return BatchProcessor(settings, pool=None, producer=None, model=None, clock=None)  # type: ignore[arg-type]


def test_nothing_pending_nothing_to_wait_for() -> None:
    p = _processor()
    assert p.evaluation_wait(time.monotonic()) is None
    p.set_backlog(True)
    assert p.evaluation_wait(time.monotonic()) is None


def test_without_a_backlog_pending_accounts_are_due_at_once() -> None:
    p = _processor()
    p.pending.add("a", Counter({1.0: 1}))
    assert p.evaluation_wait(time.monotonic()) == 0.0


def test_under_a_backlog_the_oldest_account_waits_the_interval() -> None:
    p = _processor()
    p.set_backlog(True)
    p.pending.add("a")
    now = time.monotonic()
    assert 1.9 < p.evaluation_wait(now) <= 2.0  # type: ignore[operator]
    p.pending.add("b")  # a later account does not reset the oldest one's wait
    assert 0.9 < p.evaluation_wait(now + 1.0) <= 1.0  # type: ignore[operator]
    assert p.evaluation_wait(now + 2.5) == 0.0
    assert set(p.pending.take(10)) == {"a", "b"}
    assert p.evaluation_wait(now + 2.5) is None  # taken: none left that no round holds


def test_catching_up_makes_everything_due_and_wakes_the_evaluators() -> None:
    p = _processor()
    p.set_backlog(True)
    p.pending.add("a")
    p.pending.changed.clear()
    p.set_backlog(False)
    assert p.pending.changed.is_set()
    assert p.evaluation_wait(time.monotonic()) == 0.0


def test_more_waiting_than_the_consumer_lets_wait_is_due_at_once() -> None:
    """Over ``pending_max_accounts`` the consumer stops fetching until the evaluator
    catches up: pacing then would stall both."""
    p = _processor(pending_max_accounts=2)
    p.set_backlog(True)
    for a in ("a", "b", "c"):
        p.pending.add(a)
    assert p.evaluation_wait(time.monotonic()) == 0.0


def test_accounts_put_back_after_a_failed_round_are_due_at_once() -> None:
    p = _processor()
    p.set_backlog(True)
    p.pending.add("a")
    taken = p.pending.take(10)
    p.pending.release(taken)
    p.pending.add("b")  # joined meanwhile: waits its interval
    p.pending.restore(taken)
    assert list(p.pending.take(1)) == ["a"]  # back at the front
    p.pending.release(["a"])
    p.pending.restore({"a": Counter()})
    assert p.evaluation_wait(time.monotonic()) == 0.0


async def test_catching_up_waits_for_the_batch_being_applied() -> None:
    """That batch touches most of what is pending again: a round started before it
    commits would be followed by a second one of the same accounts right after."""
    p = _processor()
    p.set_backlog(True)
    p.pending.add("a")
    gate = asyncio.Event()
    task = asyncio.create_task(gate.wait())
    p.applying = Applying(task, batch=None)  # type: ignore[arg-type]
    p.pending.changed.clear()
    p.set_backlog(False)
    assert p.backlog and not p.pending.changed.is_set()
    assert p.evaluation_wait(time.monotonic()) > 0  # type: ignore[operator]
    gate.set()
    await task
    await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    assert not p.backlog and p.pending.changed.is_set()
    assert p.evaluation_wait(time.monotonic()) == 0.0


async def test_behind_again_before_the_batch_commits_stays_behind() -> None:
    p = _processor()
    p.set_backlog(True)
    gate = asyncio.Event()
    task = asyncio.create_task(gate.wait())
    p.applying = Applying(task, batch=None)  # type: ignore[arg-type]
    p.set_backlog(False)
    p.set_backlog(True)  # the next fetch found more than a batch waiting
    gate.set()
    await task
    await asyncio.sleep(0)
    assert p.backlog


def test_a_round_takes_an_equal_share_per_evaluator() -> None:
    p = _processor(evaluators=2, evaluate_batch=1000)
    for i in range(1000):
        p.pending.add(f"a{i}")
    first = p.pending.take(p.pending.share(p.settings))
    assert len(first) == 500
    second = p.pending.take(p.pending.share(p.settings))
    assert len(second) == 500
    for i in range(5000):
        p.pending.add(f"b{i}")
    assert p.pending.share(p.settings) == 1000  # never above evaluate_batch
    small = _processor(evaluators=2)
    for i in range(30):
        small.pending.add(f"c{i}")
    assert len(small.pending.take(small.pending.share(small.settings))) == 30  # one round


def test_a_second_round_waits_for_enough_accounts_while_one_runs() -> None:
    """At a steady rate a few dozen accounts come per batch: one round at a time
    takes what came meanwhile, instead of rounds side by side splitting them into
    small rounds that each pay the window read's fixed costs."""
    p = _processor(evaluators=2)
    for i in range(30):
        p.pending.add(f"a{i}")
    now = time.monotonic()
    assert p.evaluation_wait(now) == 0.0  # nothing running: at once
    running = p.pending.take(p.pending.share(p.settings))
    assert len(running) == 30
    for i in range(30, 60):
        p.pending.add(f"a{i}")
    assert p.evaluation_wait(now) is None  # 30 wait: not worth a second round yet
    for i in range(60, 30 + MIN_ROUND):
        p.pending.add(f"a{i}")
    assert p.evaluation_wait(now) == 0.0  # MIN_ROUND wait: a second round now
    p.pending.changed.clear()
    p.pending.release(running)  # the first round's end wakes the evaluators
    assert p.pending.changed.is_set()
    assert p.evaluation_wait(now) == 0.0


def test_an_account_the_running_round_holds_does_not_count_toward_a_second() -> None:
    p = _processor(evaluators=2)
    for i in range(MIN_ROUND):
        p.pending.add(f"a{i}")
    running = p.pending.take(MIN_ROUND)
    for account in running:  # each took events again while being evaluated
        p.pending.add(account)
    p.pending.add("new")
    assert len(p.pending) == MIN_ROUND + 1
    assert p.evaluation_wait(time.monotonic()) is None  # one free account only
    p.pending.release(running)
    assert p.evaluation_wait(time.monotonic()) == 0.0


def test_receive_times_are_counted_per_account_and_time() -> None:
    """What the event→score latency is observed from: per account, how many of its
    events were received at each time, runs of one time or not."""
    from datetime import UTC, datetime

    from services.scoring.consumer import received_times
    from shared.events import EVENT_ADAPTER

    t1, t2 = (datetime(2026, 12, 4, 10, 0, s, tzinfo=UTC) for s in (1, 2))

    def login(i: int, account: str, at: datetime) -> Any:
        return EVENT_ADAPTER.validate_python(
            {
                "id": f"e{i}",
                "type": "login",
                "account_id": account,
                "user_id": "u",
                "timestamp": at.isoformat(),
                "received_at": at.isoformat(),
            }
        )

    seq = [("a", t1), ("b", t1), ("a", t1), ("a", t2), ("b", t2), ("a", t1)]
    got = received_times([login(i, acc, at) for i, (acc, at) in enumerate(seq)])
    assert got == {
        "a": Counter({t1.timestamp(): 3, t2.timestamp(): 1}),
        "b": Counter({t1.timestamp(): 1, t2.timestamp(): 1}),
    }
