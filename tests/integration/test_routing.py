"""Routing modes over real replicas: affinity by prompt prefix and by session."""

from __future__ import annotations

import pytest

from .conftest import MODEL, StartEmulator, StartGateway, client, ledger_rows

pytestmark = pytest.mark.integration


def test_prefix_and_session_affinity_keep_related_requests_on_one_replica(
    start_emulator: StartEmulator, start_gateway: StartGateway
) -> None:
    replicas = [start_emulator(time_scale=50.0).url for _ in range(3)]
    by_prefix = start_gateway(replicas, model="routing: prefix_affinity")
    c = client(by_prefix.url)
    for system in ("You are a tax advisor.", "You are a poet.", "You triage tickets."):
        for question in ("one?", "two?", "three?"):
            messages = [
                {"role": "system", "content": system * 20},
                {"role": "user", "content": question},
            ]
            c.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    # Completions given as token ids (what the twin's replays send) are keyed alike.
    for shared in (11, 22, 33):
        for i in range(3):
            c.completions.create(model=MODEL, prompt=[shared] * 200 + [i], max_tokens=2)
    rows = ledger_rows(by_prefix, expected=18)
    homes = [{r["backend"] for r in rows[i : i + 3]} for i in range(0, 18, 3)]
    assert all(len(h) == 1 for h in homes)  # each prefix stayed on one replica
    assert len(set().union(*homes)) > 1  # and prefixes did not all land on one

    by_session = start_gateway(replicas, model="routing: session_affinity")
    c = client(by_session.url)
    for session in ("alice", "bob", "alice", "bob", "alice"):
        c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            extra_headers={"X-Inferplane-Session": session},
        )
    rows = ledger_rows(by_session, expected=5)
    assert len({rows[i]["backend"] for i in (0, 2, 4)}) == 1
    assert len({rows[i]["backend"] for i in (1, 3)}) == 1
