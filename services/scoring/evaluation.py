"""One evaluation path for every trigger (events, sweep, rescore): read the windows
of a set of accounts in one query, compute KPIs and scores, write the current score
and the day's history row, and say which snapshots to publish.

Runs inside the caller's transaction; the caller publishes the returned snapshots
only after that transaction commits (see consumer.py / sweep.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

import orjson

from services.scoring import store
from services.scoring.kpis import compute_kpis
from services.scoring.metrics import ACCOUNTS_SCORED
from services.scoring.score_model import ScoreModel, evaluate
from shared.health import Band

Trigger = Literal["events", "sweep", "rescore"]
YIELD_EVERY = 100  # accounts evaluated between two yields to the event loop


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A :class:`shared.health.HealthSnapshot` ready to publish. Built as a plain
    dict (same JSON as ``HealthSnapshot.encode()``; the tests decode it with
    ``HealthSnapshot.decode``) because pydantic construction per account per
    batch was the hottest spot of the consumer."""

    account_id: str
    revision: int
    payload: dict[str, Any]

    def encode(self) -> bytes:
        return orjson.dumps(self.payload)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What an evaluation round wrote: the snapshots to publish once its
    transaction commits, and the accounts whose score it wrote (an account it
    lost to a concurrent evaluation is not among them: see ``store.save_scores``)."""

    snapshots: list[Snapshot]
    written: set[str]


def digest(*parts: object) -> int:
    """A stable signed 64-bit digest of what a snapshot says (``parts``: every field
    but its time stamps, trigger and revision), stored with the score
    (``scoring_scores.snapshot_digest``): a new revision is published when it
    differs. ``hash()`` would not do: it changes from one process to the next."""
    text = "\x1f".join(map(repr, parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


def _band(v: str | None) -> Band | None:
    return v if v in ("green", "yellow", "red") else None  # type: ignore[return-value]


async def evaluate_accounts(
    pg: store.Pg,
    account_ids: Sequence[str],
    *,
    model: ScoreModel,
    as_of: date,
    now: datetime,
    trigger: Trigger,
    source_received_at: dict[str, datetime] | None = None,
    current: bool = True,
) -> Evaluation:
    """Evaluate ``account_ids`` as of ``as_of``; returns the snapshots to publish
    (accounts whose snapshot would say something else than the last one — score,
    band, KPIs, explanation, 7-day delta, coverage, grace, model version, name,
    stage or CSM — or whose last snapshot was never published) and the accounts
    written. With ``current=False`` (rescore of a past day) only the history row is
    written and nothing is published."""
    states = await store.load_states(pg, account_ids, as_of, model.key_features)
    rows: list[store.ScoreRow] = []
    snapshots: list[Snapshot] = []
    as_of_text, now_text = as_of.isoformat(), now.isoformat()  # the same for every account
    for i, st in enumerate(states):
        if i and not i % YIELD_EVERY:
            # a round of 1,000 accounts is ~40 ms of CPU: let the consumer's batch
            # send its next statement meanwhile
            await asyncio.sleep(0)
        kpis = compute_kpis(st.windows)
        ev = evaluate(
            model,
            kpis,
            lifecycle_stage=st.lifecycle_stage,
            onboarding_completed_at=st.onboarding_completed_at,
            as_of=as_of,
        )
        delta = (
            None
            if ev.score is None or st.score_7d_ago is None
            else round(ev.score - st.score_7d_ago, 2)
        )
        kpis_json = orjson.dumps(kpis).decode()
        measures_json = store.pack_measures(ev.measures)
        says = digest(
            ev.score,
            ev.band,
            delta,
            ev.coverage,
            ev.model_version,
            ev.in_grace_period,
            kpis_json,
            measures_json,
            st.name,
            st.lifecycle_stage,
            st.csm,
        )
        # A new revision (and snapshot) when anything the snapshot says changed: the
        # 7-day delta moves on its own, a grace period ends, an account is renamed
        # or changes stage. A score written before scoring_0008 has no digest yet:
        # compared as then (score, band, KPIs).
        if st.revision is None:
            changed = True
        elif st.prev_digest is None:
            changed = st.prev_score != ev.score or st.prev_band != ev.band or st.prev_kpis != kpis
        else:
            changed = st.prev_digest != says
        revision = (st.revision or 0) + 1 if changed else (st.revision or 0)
        rows.append(
            store.ScoreRow(
                account_id=st.account_id,
                as_of=as_of,
                evaluated_at=now,
                trigger=trigger,
                score=ev.score,
                band=ev.band,
                score_delta_7d=delta,
                coverage=ev.coverage,
                model_version=ev.model_version,
                in_grace_period=ev.in_grace_period,
                kpis_json=kpis_json,
                measures_json=measures_json,
                revision=revision,
                prev_revision=st.revision,
                prev_as_of=st.prev_as_of,
                evaluated_seq=st.applied_seq,
                snapshot_digest=says,
            )
        )
        if current and (changed or st.published_revision < revision):
            received = (source_received_at or {}).get(st.account_id)
            snapshots.append(
                Snapshot(
                    st.account_id,
                    revision,
                    {
                        "account_id": st.account_id,
                        "revision": revision,
                        "as_of": as_of_text,
                        "evaluated_at": now_text,
                        "trigger": trigger,
                        "account_name": st.name,
                        "lifecycle_stage": st.lifecycle_stage,
                        "csm": st.csm,
                        "score": ev.score,
                        "band": ev.band,
                        "previous_band": _band(st.prev_band),
                        "score_delta_7d": delta,
                        "coverage": ev.coverage,
                        "model_version": ev.model_version,
                        "in_grace_period": ev.in_grace_period,
                        "kpis": orjson.Fragment(kpis_json),
                        "measures": [m.as_dict() for m in ev.measures],
                        "source_received_at": None if received is None else received.isoformat(),
                    },
                )
            )
    written = await store.save_scores(pg, rows, current=current)
    ACCOUNTS_SCORED.labels(trigger).inc(len(written))
    return Evaluation([s for s in snapshots if s.account_id in written], written)
